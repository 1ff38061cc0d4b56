"""``dcl train``: train or evaluate Mask R-CNN (baseline or DCL) with detectron2.

A drop-in for the original ``train_net.py``: ``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only`` and trailing ``KEY VALUE`` config
overrides mean what they mean there, so every command of the original README works with
``python train_net.py`` replaced by ``dcl train``. Like detectron2's own ``train_net.py`` this is a
thin composition of library parts: :func:`setup` (the config, :mod:`dcl.training.config`), :func:`main` (one
worker: evaluate, or train with :class:`dcl.training.engine.Trainer`) and :func:`run` (checks, the run record,
``launch``).

Extra options: ``--import MODULE`` (a module or ``.py`` file of one's own, imported before the
model is built: its detectron2 registrations, :mod:`dcl.training.methods`), ``--results-dir DIR`` (on success, copy the small results there),
``--weights-dir DIR`` (local weights directory, see :mod:`dcl.data.weights`), ``--keep-checkpoints K``
(only the newest K periodic checkpoints stay in OUTPUT_DIR), ``--dry-run`` (check the
command: parse, resolve weights and datasets, build the model on the CPU; train nothing),
``--tracking {mlflow,wandb}`` and its ``--tracking-*`` options (log scalars, config and tags to an
experiment tracker from the main process: :mod:`dcl.tracking`; off by default).

Devices. ``--num-gpus N`` workers per machine (:mod:`dcl.training.launch`): one per GPU (NCCL), or with
``MODEL.DEVICE cpu`` N CPU workers (gloo); 1 on one machine trains in this process. If one worker
fails the others are killed and ``dcl train`` exits 1. In an ``srun`` step of several tasks (each
task one machine, usually one per node) the machine count, rank and rendezvous address come from
Slurm (:mod:`dcl.slurm`) unless given. ``SOLVER.IMS_PER_BATCH`` is the total over all GPUs. ``SEED`` < 0 (detectron2's "random")
is replaced by a seed drawn here, so ``config.yaml`` and ``run.json`` say which one a run used.

Outputs in ``OUTPUT_DIR`` (``docs/design.md``, "Per-run files"): detectron2's (``config.yaml``,
``metrics.json``, ``log.txt``, ``model_<iter>.pth`` + ``last_checkpoint``, ``model_final.pth``,
``inference/coco_instances_results.json``), ``inference/detectron2_eval.json`` (COCO AP per test
dataset) and ``run.json`` (:mod:`dcl.runrecord`). An ``--eval-only`` run beside a training's
``run.json`` writes its ``run.json``, ``config.yaml`` and ``log.txt`` to ``inference/``.

Pre-emption (:mod:`dcl.training.preemption`). SIGTERM, SIGUSR1 or SIGINT lets the current iteration
finish, saves a checkpoint at it, marks ``run.json`` ``interrupted`` and exits with
:data:`~dcl.training.preemption.EXIT_INTERRUPTED`; ``--resume`` continues the run as if it had not stopped
(:mod:`dcl.training.engine`, :mod:`dcl.training.sampler`; README, "The resume guarantee"). In a Slurm batch job
``--max-chunks N`` requeues the interrupted job itself.

Exit codes: 0 finished; 1 failed (bad input: a one-line message; a crash: the traceback; both
recorded in ``run.json``); 2 command-line usage error; 75 (``EX_TEMPFAIL``) interrupted: run the
same command with ``--resume``; 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from dcl.training.config import (
    check_datasets,
    check_devices,
    check_solver,
    dry_run_summary,
    load_config,
    resolve_weights,
    with_values,
)
from dcl.training.engine import (
    AtomicCheckpointer,
    Trainer,
    check_expected_results,
    copy_results,
    prepare_output_dir,
)
from dcl.info import environment_info
from dcl.io import InputError, exclusive_lock
from dcl.training.launch import launch
from dcl.layout import RUN_LOCK
from dcl.training.preemption import (
    EXIT_INTERRUPTED,
    StopSignal,
    exit_if_interrupted,
    forward_signals_to_workers,
    requeue_for_the_next_chunk,
)
from dcl.runrecord import RunRecord, mark_failed_if_running, now, record_path, run_fields
from dcl.training.sampler import kill_loader_workers
from dcl.slurm import DistributedLayout, resolve_distributed, slurm_job
from dcl.training.options import add_arguments, command_line, take_trailing_options

if TYPE_CHECKING:
    from dcl.tracking import Tracker, TrackingOptions

__all__ = ["add_arguments", "main", "run", "setup"]


@dataclasses.dataclass
class _Job:
    """Everything a worker process needs (picklable: spawned workers rebuild the config)."""

    config_file: str
    opts: list[str]
    resume: bool
    eval_only: bool
    results_dir: Optional[str]
    record_fields: dict
    record_path: str
    keep_checkpoints: Optional[int] = None
    imports: tuple = ()  # --import: modules every worker imports before it builds the model
    tracking: Optional["TrackingOptions"] = None


def setup(job: _Job) -> CfgNode:
    """The worker's config, logging (detectron2's ``default_setup``) and datasets."""
    if job.imports:  # a spawned worker starts without the user's registrations
        from dcl.training.methods import import_modules

        import_modules(job.imports)
    cfg = load_config(job.config_file, job.opts)
    setup_args = argparse.Namespace(
        config_file=job.config_file, eval_only=job.eval_only, opts=job.opts, resume=job.resume
    )
    # config.yaml and log.txt go beside run.json: for an evaluation next to a training record,
    # OUTPUT_DIR/inference, so the training's own config.yaml is not overwritten.
    log_dir = str(Path(job.record_path).parent)
    default_setup(with_values(cfg, OUTPUT_DIR=log_dir), setup_args)
    setup_logger(log_dir, distributed_rank=comm.get_rank(), name="dcl")
    from dcl.data.datasets import register_datasets

    register_datasets()
    return cfg


def main(job: _Job, stop: StopSignal) -> None:
    """One training/evaluation process; ``stop`` is its stop signal. Exits (SystemExit) with
    :data:`EXIT_INTERRUPTED` when stopped."""
    cfg = setup(job)
    stop.install()  # until the run record exists a signal is only recorded
    record = (
        RunRecord.begin(Path(job.record_path), resume=job.resume, fields=job.record_fields)
        if comm.is_main_process()
        else None
    )
    trainer = None
    tracker = None
    try:
        stop.end_set_up()
        if record is not None and job.tracking is not None:
            tracker = _start_tracking(job, cfg)
        if job.eval_only:
            model = Trainer.build_model(cfg)
            AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=job.resume)
            results = Trainer.evaluate(cfg, model, stop)
            if cfg.TEST.AUG.ENABLED:  # as train_net.py: plain and TTA results, then the check
                results.update(Trainer.evaluate_with_tta(cfg, model, stop))
            if tracker is not None:
                from detectron2.evaluation.testing import flatten_results_dict

                tracker.log_metrics(flatten_results_dict(results), 0)
            if comm.is_main_process() and not stop.skipped_evaluation:
                check_expected_results(cfg, results)
        else:
            trainer = Trainer(cfg, stop, record, keep_checkpoints=job.keep_checkpoints, tracker=tracker)
            trainer.resume_or_load(resume=job.resume)
            if record is not None:
                record.start_iteration(trainer.start_iter)
            trainer.train()
        stop.raise_if_evaluation_skipped()  # a signal after the last step: the final evaluation is still due
    except BaseException as error:
        if tracker is not None:  # closed on every way out, so no tracker run is left running
            tracker.finish("interrupted" if stop.requested else "failed")
        exit_if_interrupted(stop, trainer, record, error)
        if record is not None and record.status == "running":
            record.close(
                "failed",
                1,
                error=f"{type(error).__name__}: {error}",
                iteration=trainer.completed_iterations if trainer is not None else None,
            )
        raise
    finally:
        if trainer is not None:
            trainer.close_data_loaders()
    if tracker is not None:
        tracker.finish("finished")
    if record is not None:
        record.close("finished", 0, iteration=cfg.SOLVER.MAX_ITER if not job.eval_only else None)
        if job.results_dir:
            copy_results(cfg, Path(job.record_path), job.results_dir, job.eval_only)


def _start_tracking(job: _Job, cfg: CfgNode) -> "Tracker":
    """The main process's tracker run (:mod:`dcl.tracking`), with the merged config and the run
    record's fields as tags; ``config.yaml`` is logged as a file."""
    from dcl import tracking

    folder = Path(job.record_path).parent
    tracker = tracking.start(
        job.tracking,
        folder,
        resume=job.resume,
        tags=tracking.record_tags(job.record_fields),
        config=cfg,
    )
    tracker.log_file(folder / "config.yaml")
    return tracker


def run(args: argparse.Namespace) -> int:
    stop = StopSignal()
    # Slurm's pre-timeout signal may come up to a minute before the requested offset, so also
    # during the set-up: record it, and end the run as interrupted once its run record exists.
    with stop.handling(stop_point="once the run is set up"):
        try:
            return _run(args, stop)
        except (InputError, OSError):  # one line by the CLI (a full disk, a read-only folder)
            raise
        except KeyboardInterrupt:
            print("dcl train: aborted by a second Ctrl-C (no checkpoint written)", file=sys.stderr)
            return 130
        except Exception:
            # The traceback (also in log.txt and run.json); returning instead of raising lets
            # the frames that hold data loaders go before the interpreter's exit handlers run.
            traceback.print_exc()
            return 1
        finally:
            kill_loader_workers()


def _run(args: argparse.Namespace, stop: StopSignal) -> int:
    take_trailing_options(args)
    tracking_options = _check_options(args)
    cfg = _load_config(args)
    distributed = resolve_distributed(args.num_machines, args.machine_rank, args.dist_url)
    check_solver(cfg, args.num_gpus, distributed.num_machines, args.eval_only)
    if not args.dry_run:
        check_devices(cfg, args.num_gpus, distributed.num_machines, distributed.machines_per_node)
    from dcl.data.datasets import register_datasets

    register_datasets()
    check_datasets(cfg, args.eval_only)
    local_weights = resolve_weights(cfg, args.resume, args.weights_dir)
    weights = {"requested": cfg.MODEL.WEIGHTS, "resolved": local_weights or cfg.MODEL.WEIGHTS}
    if args.dry_run:
        summary = dry_run_summary(
            cfg,
            config_file=args.config_file,
            eval_only=args.eval_only,
            num_gpus=args.num_gpus,
            distributed=distributed,
            weights=weights,
        )
        print(json.dumps(summary, indent=2))
        return 0
    worker_opts = args.opts + (["MODEL.WEIGHTS", local_weights] if local_weights else [])
    if cfg.SEED < 0:
        # Draw the "random" seed here, so run.json and config.yaml say which one was used.
        cfg = with_values(cfg, SEED=int.from_bytes(os.urandom(4), "little") % 2**31)
        worker_opts += ["SEED", str(cfg.SEED)]
    output_dir = Path(cfg.OUTPUT_DIR)
    with contextlib.ExitStack() as held:
        if distributed.machine_rank == 0:  # one dcl train per OUTPUT_DIR, until this process ends
            held.enter_context(exclusive_lock(output_dir / RUN_LOCK, _holder(), f"OUTPUT_DIR {output_dir}"))
        if distributed.machine_rank == 0 and not args.eval_only:  # a training owns its OUTPUT_DIR
            prepare_output_dir(output_dir)
        job = _job(args, cfg, worker_opts, tracking_options, distributed, weights)
        backend = "nccl" if str(cfg.MODEL.DEVICE).startswith("cuda") else "gloo"
        code = _execute(job, stop, args.num_gpus, distributed, backend)
        if code == EXIT_INTERRUPTED and args.max_chunks is not None:
            requeue_for_the_next_chunk(Path(job.record_path), args.max_chunks)
        return code


def _check_options(args: argparse.Namespace) -> Optional["TrackingOptions"]:
    """The checks of the options alone (before any config is read); the tracking options, if any."""
    from dcl import tracking

    tracking_options = tracking.options_from_args(args)
    if tracking_options is not None and not args.dry_run:
        tracking.check_available(tracking_options.backend)
    for flag in ("max_chunks", "keep_checkpoints"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    return tracking_options


def _load_config(args: argparse.Namespace) -> CfgNode:
    """The config of the command, after the ``--import`` modules; refused if it names a registered
    name that none of them registered."""
    if args.imports:
        from dcl.training.methods import check_registered, import_modules

        import_modules(args.imports)
    cfg = load_config(args.config_file, args.opts)
    if args.imports:
        problems = check_registered(cfg)
        if problems:
            raise InputError("; ".join(problems))
    return cfg


def _job(
    args: argparse.Namespace,
    cfg: CfgNode,
    worker_opts: list[str],
    tracking_options: Optional["TrackingOptions"],
    distributed: DistributedLayout,
    weights: dict,
) -> _Job:
    """What every worker is given: the command, and the fields its run record begins with."""
    output_dir = Path(cfg.OUTPUT_DIR)
    return _Job(
        config_file=args.config_file,
        opts=worker_opts,
        resume=args.resume,
        eval_only=args.eval_only,
        results_dir=args.results_dir,
        keep_checkpoints=args.keep_checkpoints,
        imports=tuple(args.imports),
        tracking=tracking_options,
        record_path=str(record_path(output_dir, args.eval_only)),
        record_fields=run_fields(
            eval_only=args.eval_only,
            command=command_line(args),
            config_file=args.config_file,
            overrides=list(args.opts),
            seed=cfg.SEED,
            output_dir=cfg.OUTPUT_DIR,
            max_iter=cfg.SOLVER.MAX_ITER,
            num_gpus=args.num_gpus,
            on_gpu=str(cfg.MODEL.DEVICE).startswith("cuda"),
            distributed=dataclasses.asdict(distributed),
            weights=weights,
            slurm=slurm_job(),
            environment=environment_info(),
        ),
    )


def _holder() -> str:
    """Who holds a run folder's lock, as a second ``dcl train`` on it reports it."""
    job = os.environ.get("SLURM_JOB_ID")
    return (
        f"dcl train on {socket.gethostname()}, pid {os.getpid()}"
        + (f", Slurm job {job}" if job else "")
        + f", since {now()}"
    )


def _execute(job: _Job, stop: StopSignal, num_gpus: int, distributed: DistributedLayout, backend: str) -> int:
    """Run :func:`main` here (one worker) or in ``num_gpus`` processes; the exit code of the run."""
    if num_gpus * distributed.num_machines == 1:
        try:
            main(job, stop)
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0
    if stop.requested:  # signalled during the set-up: start no workers, record the interruption
        if distributed.machine_rank == 0:
            RunRecord.begin(Path(job.record_path), resume=job.resume, fields=job.record_fields).close(
                "interrupted", EXIT_INTERRUPTED, signal_name=stop.name
            )
        return EXIT_INTERRUPTED
    forward_signals_to_workers()
    result = launch(
        main,
        num_gpus,
        num_machines=distributed.num_machines,
        machine_rank=distributed.machine_rank,
        dist_url=distributed.dist_url,
        backend=backend,
        args=(job, StopSignal()),  # each its own
        clean_exits=(0, EXIT_INTERRUPTED),
    )
    if result.failed is None:
        return EXIT_INTERRUPTED if EXIT_INTERRUPTED in result.exit_codes else 0
    code = result.exit_codes[result.failed]
    rank = distributed.machine_rank * num_gpus + result.failed
    reason = (
        f"worker {rank} {'exited with code ' + str(code) if code >= 0 else 'killed by ' + signal.Signals(-code).name}"
    )
    mark_failed_if_running(Path(job.record_path), 1, reason)
    print(f"dcl train: error: {reason}; the other workers were stopped", file=sys.stderr)
    return 1
