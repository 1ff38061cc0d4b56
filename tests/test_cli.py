"""The `dcl` entry point: subcommands listed, lazy imports, argparse-style errors."""

import subprocess
import sys

from dcl.cli import SUBCOMMANDS
from instance_fixtures import run_dcl


def test_help_lists_every_subcommand():
    result = run_dcl("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_help_does_not_import_heavy_modules():
    code = "import sys; from dcl.cli import build_parser; build_parser(); print('torch' in sys.modules, 'detectron2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_subcommand_help_prints_no_third_party_warnings():
    # dcl train imports torch and detectron2 (and fvcore, which warns about torch.jit.script).
    for name in SUBCOMMANDS:
        result = run_dcl(name, "--help")
        assert result.returncode == 0 and result.stdout, name
        assert result.stderr == "", (name, result.stderr)


def test_unknown_subcommand_is_a_usage_error():
    result = run_dcl("trian")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_unknown_flag_is_a_usage_error():
    result = run_dcl("info", "--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


def test_info_reports_detectron2_build():
    result = run_dcl("info", "--json")
    assert result.returncode == 0, result.stderr
    import json

    info = json.loads(result.stdout)
    assert info["detectron2"]["version"]
    assert isinstance(info["detectron2"]["compiled_extension"], bool)
