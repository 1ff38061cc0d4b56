"""The ``dcl train`` command line: ``train_net.py``'s flags (``--config-file``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing
``KEY VALUE`` overrides) and the pipeline's own (``--results-dir``, ``--weights-dir``,
``--max-chunks``, ``--keep-checkpoints``, ``--dry-run``, ``--import``, the ``--tracking*`` options
of :mod:`dcl.tracking`); options after the overrides; the command as ``run.json`` records it. What
the options do is :mod:`dcl.training.train`'s.
"""

from __future__ import annotations

import argparse

from dcl import tracking
from dcl.data import weights as dcl_weights
from dcl.training.engine import EVAL_RESULTS
from dcl.layout import RUN_RECORD
from dcl.training.preemption import EXIT_INTERRUPTED

__all__ = ["add_arguments", "take_trailing_options", "command_line"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dcl train --config-file configs/toy_coco_mask_rcnn_R18_FPN.yaml OUTPUT_DIR work_dirs/toy\n"
        "  dcl train --num-gpus 4 --config-file configs/cityscapes_mask_rcnn_R_50_FPN.yaml \\\n"
        "      MODEL.ROI_HEADS.NAME ContrastRoIHeads MODEL.ROI_MASK_HEAD.NAME ContrastConvUpsampleHead\n"
        "  dcl train --eval-only --config-file CFG MODEL.WEIGHTS work_dirs/x/model_final.pth\n"
        f"exit codes: 0 finished, 1 failed, 2 usage error, {EXIT_INTERRUPTED} interrupted (rerun with --resume)"
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module (a dotted name, or a .py file) before the config is read and the model "
        "built, so its detectron2 registrations (heads, losses, meta-architectures) and add_config(cfg) "
        "exist; repeatable (docs/own-method.md)",
    )
    _add_train_net_arguments(parser)
    _add_pipeline_arguments(parser)
    tracking.add_arguments(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. SOLVER.IMS_PER_BATCH 8 OUTPUT_DIR work_dirs/x",
    )


def _add_train_net_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the original ``train_net.py``, which mean what they mean there."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="detectron2 YAML config")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint if it exists (else start from MODEL.WEIGHTS)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST only")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs (worker processes) per machine")
    parser.add_argument(
        "--num-machines",
        type=int,
        default=None,
        help="total number of machines (default: from a multi-node Slurm step, else 1)",
    )
    parser.add_argument(
        "--machine-rank",
        type=int,
        default=None,
        help="rank of this machine (default: $SLURM_PROCID in a Slurm step of several tasks, else 0)",
    )
    parser.add_argument(
        "--dist-url",
        default=None,
        help="rendezvous URL, e.g. tcp://host:port (default: first Slurm node, else a free local port)",
    )


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline's own flags: where results and weights go, Slurm chunks, checkpoints kept, dry run."""
    parser.add_argument(
        "--results-dir",
        default=None,
        metavar="DIR",
        help=f"on success copy {RUN_RECORD}, metrics.json, config.yaml and {EVAL_RESULTS} here",
    )
    parser.add_argument(
        "--weights-dir",
        default=None,
        metavar="DIR",
        help=f"where URL weights are looked up (default: ${dcl_weights.ENV_WEIGHTS_DIR}, else ./weights)",
    )
    parser.add_argument(
        "--max-chunks",
        type=int,
        default=None,
        metavar="N",
        help="in a Slurm batch job: when interrupted, requeue the job (scontrol requeue) "
        "to resume, until the run has had N attempts",
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=int,
        default=None,
        metavar="K",
        help="keep only the newest K periodic checkpoints model_<iter>.pth in OUTPUT_DIR "
        "(default: all, as detectron2); model_final.pth holds the weights without the optimizer state",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the command (config, weights, datasets, model on the CPU) without training",
    )


def take_trailing_options(args: argparse.Namespace) -> None:
    """Accept options written after the KEY VALUE overrides (``... OUTPUT_DIR x --resume``):
    argparse leaves them in ``opts``. A token in a KEY position that starts with ``--`` is an
    option (with its value, if it takes one); VALUE positions are never read as options."""
    parser = argparse.ArgumentParser(prog="dcl train")
    add_arguments(parser)
    takes_value = {flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings}
    tokens = list(args.opts or [])
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    pairs, options, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            width = 2 if takes_value.get(token.split("=", 1)[0]) and "=" not in token else 1
            options += tokens[i : i + width]
            i += width
        else:
            pairs += tokens[i : i + 2]
            i += 2
    if options:
        parser.parse_args(options, namespace=args)  # unknown options: usage error, exit 2
    args.opts = pairs


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as ``run.json`` records it: ``dcl train``, the options given, the overrides."""
    command = ["dcl", "train"]
    for module in getattr(args, "imports", None) or []:
        command += ["--import", module]
    for flag in (
        "config_file",
        "num_gpus",
        "num_machines",
        "machine_rank",
        "dist_url",
        "results_dir",
        "weights_dir",
        "max_chunks",
        "keep_checkpoints",
    ):
        value = getattr(args, flag, None)
        if value not in (None, ""):
            command += [f"--{flag.replace('_', '-')}", str(value)]
    command += [f"--{flag.replace('_', '-')}" for flag in ("resume", "eval_only") if getattr(args, flag, False)]
    if getattr(args, "tracking", None):
        command += tracking.command_words(tracking.options_from_args(args))
    return command + list(args.opts or [])
