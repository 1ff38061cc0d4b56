"""Progress bars of the long steps (``dcl errors``, the official Cityscapes AP, ``dcl data
cityscapes-to-coco``, ``dcl weights download``): tqdm on stderr, shown after 2 seconds.

Shown on a terminal only, so Snakemake logs and captured output stay free of them, unless asked:
``DCL_PROGRESS=1`` shows them anywhere (a log then gets a line per 10 seconds), ``DCL_PROGRESS=0``
hides them everywhere.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

__all__ = ["ENV_PROGRESS", "progress_bar", "wanted"]

ENV_PROGRESS = "DCL_PROGRESS"


def wanted() -> bool:
    """Whether progress bars are shown: ``$DCL_PROGRESS`` if set, else whether stderr is a terminal."""
    setting = os.environ.get(ENV_PROGRESS, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def progress_bar(total: float | None, desc: str, unit: str = "it", enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr (disabled unless :func:`wanted` and ``enabled``); ``options`` go to tqdm."""
    settings = {
        "file": sys.stderr,
        "delay": 2.0,
        "mininterval": 0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line per 10 s
        **options,
    }
    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and wanted()), **settings)
