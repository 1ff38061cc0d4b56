import sys

from dcl.cli import main

sys.exit(main())
