"""``dcl plan``: validate a workflow config and write its list of runs (``experiments.json``).

The command over :class:`dcl.workflow.experiments.Plan`: its arguments, the checkout whose configs a
plan names, the summary it prints (one line per experiment with its estimated cost,
:mod:`dcl.workflow.cost`) and ``--commands`` (every run's ``dcl train`` command line, as the train
rule runs it). No torch and no detectron2 here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dcl.io import atomic_write_json, refuse_output_over_input
from dcl.workflow.experiments import REPO_ROOT, Plan, Run, load_workflow_config

__all__ = ["add_arguments", "checkout_root", "print_plan", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "configs",
        nargs="+",
        metavar="CONFIG",
        help="workflow config file(s), layered in order (e.g. configs/paper.yaml)",
    )
    parser.add_argument(
        "--config",
        dest="assignments",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override top-level config keys, as snakemake --config does",
    )
    parser.add_argument("-o", "--output", help="write experiments.json here (default: only print the summary)")
    parser.add_argument(
        "--commands", action="store_true", help="print the `dcl train` command line of every run to train or evaluate"
    )
    parser.add_argument(
        "--check-methods",
        action="store_true",
        help="also import the modules of the config's own methods and check their registered names and "
        "configs (with detectron2, in a subprocess), as the workflow does before any job",
    )
    parser.add_argument(
        "--repo-root",
        metavar="DIR",
        help="the checkout whose detectron2 configs and published numbers the config names "
        "(default: the checkout the working directory is in, as `snakemake` run here uses, else dcl's own)",
    )


def checkout_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout a command runs in: the nearest folder at or above ``start`` (default: the
    working directory) with the workflow's ``Snakefile``, where ``snakemake`` run from there finds
    the detectron2 configs; else the checkout of this package."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Snakefile").is_file() and (folder / "workflow" / "rules").is_dir():
            return folder
    return REPO_ROOT


def print_plan(plan: Plan) -> None:
    """``dcl plan``'s summary: one line per experiment with its estimated cost, then the totals."""
    trained, released = plan.train_jobs, plan.released_jobs
    costs = {(r.experiment, r.seed): plan.cost(r) for r in trained}
    cpu = {(r.experiment, r.seed): plan.cpu_step_seconds(r) for r in plan.jobs.values()}
    print(
        f"preset {plan.preset}: {len(plan.runs)} runs in experiments.json; "
        f"{len(trained)} to train, {len(released)} released checkpoints to evaluate"
    )
    width = max((len(r.experiment) for r in plan.runs), default=10)
    print(
        f"{'experiment':{width}s}  {'group':8s} {'dataset':14s} {'method':8s} {'seeds':7s}"
        f" {'GPUs':>4s} {'h/run':>5s} {'chunks':>6s} {'GPU-h':>7s} {'disk GB':>7s} {'CPU h':>6s}"
    )
    by_experiment: dict[str, list[Run]] = {}
    for run_ in plan.runs:
        by_experiment.setdefault(run_.experiment, []).append(run_)
    for name, runs in by_experiment.items():
        first = runs[0]
        seeds = ",".join(str(r.seed) for r in runs)
        keys = [(r.experiment, r.seed) for r in runs if (r.experiment, r.seed) in plan.jobs]
        own = [costs[k] for k in keys if k in costs]
        figures = (
            f" {first.resources.gpus:4d} {max(c.wall_hours for c in own):5.1f} {max(c.chunks for c in own):6d}"
            f" {sum(c.gpu_hours for c in own):7.1f} {sum(c.disk_gb for c in own):7.1f}"
            if own
            else f" {'':4s} {'-':>5s} {'-':>6s} {'-':>7s} {'-':>7s}"
        )
        cpu_hours = f" {sum(cpu[k] for k in keys) / 3600:6.2f}" if keys else f" {'-':>6s}"
        shared = f"  (= {first.folder})" if first.folder != name else ""
        print(
            f"{name:{width}s}  {first.group:8s} {first.dataset:14s} {first.method:8s} {seeds:7s}"
            f"{figures}{cpu_hours}{shared}"
        )
    print(
        f"total: {sum(c.gpu_hours for c in costs.values()):.0f} GPU-hours of training "
        f"(chunks: Slurm jobs of the run's time limit, at most max_chunks {plan.max_chunks}); "
        f"checkpoints {sum(c.disk_gb for c in costs.values()):.0f} GB once trained "
        f"(keep_checkpoints {plan.keep_checkpoints}; "
        f"{sum(c.disk_gb_keep_all for c in costs.values()):.0f} GB if every checkpoint were kept); "
        f"evaluation and error analyses {sum(cpu.values()) / 3600:.1f} hours of CPU jobs"
    )
    print("(estimates: dcl/workflow/cost.py says where each figure comes from)")


def run(args: argparse.Namespace) -> int:
    refuse_output_over_input(args.output, {f"config file {i + 1}": path for i, path in enumerate(args.configs)})
    config = load_workflow_config(args.configs, args.assignments)
    source = " + ".join(map(str, args.configs)) + (" + --config" if args.assignments else "")
    plan = Plan(config, source, repo_root=args.repo_root or checkout_root())
    if args.check_methods:
        plan.check_methods()
    if args.output:
        atomic_write_json(args.output, plan.document())
    if args.commands:
        for run_ in plan.jobs.values():
            print(plan.train_command(run_))
        return 0
    print_plan(plan)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
