"""The ``dcl`` command: one entry point, one subcommand per pipeline step.

Subcommand modules are imported only when that subcommand runs, so ``dcl --help`` and the light
subcommands (evaluation, error analysis, reporting) start without importing torch or detectron2.
Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("dcl.data.datasets", "create, convert and check datasets (toy, cityscapes-to-coco, check)"),
    "train": ("dcl.training.train", "train or evaluate a Mask R-CNN / DCL model (drop-in for train_net.py)"),
    "evaluate": ("dcl.evaluation.evaluate", "COCO and Cityscapes mask AP of a COCO results file"),
    "errors": ("dcl.evaluation.errors", "segmentation-error analysis: AP gain from removing fFP, bFP, FN"),
    "report": ("dcl.report", "aggregate run results into the paper's tables and figures"),
    "status": (
        "dcl.workflow.status",
        "state, progress and ETA of every run of a preset (while the workflow runs, or after)",
    ),
    "weights": ("dcl.data.weights", "download pretrained/released checkpoints into a local weights directory"),
    "plan": ("dcl.workflow.plan", "validate a workflow config and write its list of runs (experiments.json)"),
    "info": ("dcl.info", "versions of dcl, torch, detectron2 and the compatibility shims in use"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only the ``selected`` subcommand's module is imported for its arguments."""
    parser = argparse.ArgumentParser(
        prog="dcl",
        description="Dense Contrastive Loss for instance segmentation: the reproducible pipeline.",
    )
    from dcl import __version__

    parser.add_argument("--version", action="version", version=f"dcl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dcl.training import early_signals

    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((arg for arg in argv if not arg.startswith("-")), None)
    # `dcl train` takes seconds to import torch: a stop signal then must still end as interrupted.
    with early_signals.recorded() if selected == "train" else contextlib.nullcontext():
        return _main(argv, selected)


def _main(argv: list[str], selected: str | None) -> int:
    parser = build_parser(selected if selected in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    from dcl.io import InputError, describe_os_error

    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0
    except InputError as error:
        # Bad input is the user's to fix: say what and where, no traceback.
        print(f"dcl {args.command}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a file that cannot be read or written: a full disk, permissions
        print(f"dcl {args.command}: error: {describe_os_error(error, 'cannot access')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
