"""``dcl train``: train or evaluate Mask R-CNN (baseline or DCL) with detectron2.

A drop-in for the original ``train_net.py``: ``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only`` and trailing ``KEY VALUE`` config
overrides mean what they mean there, so every command of the original README works with
``python train_net.py`` replaced by ``dcl train``. Like detectron2's own ``train_net.py`` this is a
thin composition of library parts: :class:`Trainer` is detectron2's ``DefaultTrainer`` with a COCO
evaluator, atomic checkpoints, preemption handling and a resumable data order.

Extra options: ``--results-dir DIR`` (on success, copy the small results there),
``--weights-dir DIR`` (local weights directory, see :mod:`dcl.weights`), ``--dry-run`` (check the
command: parse, resolve weights and datasets, build the model on the CPU; train nothing).

Devices. ``--num-gpus 1`` on one machine trains in this process. ``--num-gpus N`` starts N
worker processes (:mod:`dcl.launch`): with CUDA one per GPU (NCCL, detectron2's worker set-up);
with ``MODEL.DEVICE cpu`` N CPU workers (gloo), e.g. to test the distributed code without GPUs.
If one worker fails the others are killed and ``dcl train`` exits 1. Under Slurm, a job
step started by ``srun`` on several nodes (one task per node, e.g.
``srun --ntasks-per-node=1 dcl train --num-gpus 4 ...``) takes the machine count, machine rank
and rendezvous address from Slurm (:mod:`dcl.slurm`) unless ``--num-machines``/``--machine-rank``/
``--dist-url`` are given. ``SOLVER.IMS_PER_BATCH`` is the total over all GPUs, so more nodes means
fewer images per GPU and the same recipe.

Seed. ``SEED`` < 0 (detectron2's "random") is replaced by a seed drawn here, so ``config.yaml``
and ``run.json`` say which one a run used.

Outputs in ``OUTPUT_DIR``: ``config.yaml`` (the merged config), detectron2's ``metrics.json`` and
TensorBoard events, ``log.txt``, checkpoints ``model_<iter>.pth`` + ``last_checkpoint``,
``model_final.pth``, ``inference/coco_instances_results.json`` and
``inference/detectron2_eval.json`` (detectron2's COCO AP per test dataset: ``{dataset: {"bbox":
{...}, "segm": {...}}}``; with several test datasets, ``inference/<dataset>/``), and ``run.json``
(provenance and state, :mod:`dcl.runrecord`; format in ``docs/design.md``). An ``--eval-only``
run in a directory that holds a training ``run.json`` writes its ``run.json``, ``config.yaml`` and
``log.txt`` to ``inference/`` instead, keeping the training's own.

Preemption. SIGTERM or SIGUSR1 (Slurm sends SIGTERM at a time limit and on preemption; ask for
an early one with ``sbatch --signal=TERM@300``, or ``B:TERM@300`` when ``dcl train`` runs in the
batch script itself rather than under ``srun``) lets the current iteration finish, saves a checkpoint at it
(atomically: temporary file + rename, then ``last_checkpoint`` the same way), marks ``run.json``
``interrupted`` and exits with :data:`EXIT_INTERRUPTED`. During an evaluation the signal stops it
at once; during the set-up (Slurm may send its early signal up to a minute before the requested
offset) the run ends as interrupted before its first iteration. ``--resume`` continues from the
saved iteration with the same LR schedule and the same data order (the sampler's seed is
checkpointed and the images already seen are skipped; with aspect-ratio grouping, batches formed
after the resume can differ slightly). Data-loader workers ignore these signals, so a signal
sent to the whole process group cannot kill them mid-step.

Exit codes: 0 finished; 1 failed (bad input: a one-line message; a crash: the traceback; both
recorded in ``run.json``); 2 command-line usage error; 75 (``EX_TEMPFAIL``) interrupted: run the
same command with ``--resume``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import operator
import os
import shutil
import signal
import socket
import sys
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
import torch
import torch.utils.data as torchdata
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import dcl.modeling  # noqa: F401  (registers the DCL heads)
from dcl import weights as dcl_weights
from dcl.io import InputError, atomic_path, atomic_write_json, atomic_write_text, read_json
from dcl.launch import launch
from dcl.modeling import add_dcl_config, check_dcl_config, is_dcl_model_config
from dcl.runrecord import RUN_RECORD, RunRecord, git_state, now
from dcl.slurm import DistributedLayout, resolve_distributed, slurm_job

__all__ = [
    "EXIT_INTERRUPTED",
    "STOP_SIGNALS",
    "EVAL_RESULTS",
    "AtomicCheckpointer",
    "ResumableTrainingSampler",
    "StopSignal",
    "Trainer",
    "TrainingInterrupted",
    "load_config",
    "add_arguments",
    "run",
]

logger = logging.getLogger("dcl.train")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, run again with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EVAL_RESULTS = "detectron2_eval.json"
_RECORD_PERIOD = 20  # iterations between run.json progress updates (as detectron2's writers)


# ----------------------------------------------------------------------------- configuration

def load_config(config_file: str, opts: list[str]) -> CfgNode:
    """detectron2's default config + the DCL keys, merged with ``config_file`` and ``opts``.

    Raises:
        InputError: missing file, unknown key, malformed value or bad DCL setting, naming the
            file or override at fault.
    """
    cfg = get_cfg()
    add_dcl_config(cfg)
    if config_file:
        if not Path(config_file).is_file():
            raise InputError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except Exception as error:  # yacs raises KeyError/ValueError/AssertionError/yaml errors
            raise InputError(f"{config_file}: {_describe(error)}") from None
    if len(opts) % 2:
        raise InputError(f"config overrides must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except Exception as error:
        raise InputError(f"config override: {_describe(error)}") from None
    try:
        check_dcl_config(cfg)
    except ValueError as error:
        raise InputError(str(error)) from None
    cfg.freeze()
    return cfg


def _describe(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"{text} ({type(error).__name__})" if text else type(error).__name__


# ----------------------------------------------------------------------------- preemption

class TrainingInterrupted(BaseException):
    """A stop signal ended the run (a BaseException, so detectron2's ``except Exception`` blocks
    do not log it as a crash)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _default_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


class StopSignal:
    """Process-wide record of SIGTERM/SIGUSR1. While ``defer`` is set (the set-up until the run
    record exists, the training loop) the handler only records the signal, and the run stops at
    ``stop_point`` (the loop: after the current iteration); otherwise (building the trainer,
    evaluation) it raises :class:`TrainingInterrupted` at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.defer = False
        self.stop_point = "after the current iteration"  # where a deferred stop happens (for the log)
        self.skipped_evaluation = False
        self._owner_pid: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def install(self) -> None:
        if self._owner_pid is None:
            # Forked helpers (detectron2's Cityscapes loader pool) must die on SIGTERM as by
            # default: Pool.terminate() stops its workers with it and waits for them, which
            # hung `dcl train` while they kept this handler. Data-loader workers ignore the
            # signals (their worker_init_fn).
            os.register_at_fork(after_in_child=_default_stop_signals)
        self._owner_pid = os.getpid()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    @contextlib.contextmanager
    def handling(self, stop_point: str) -> Iterator[None]:
        """Handle the stop signals (deferred, stopping at ``stop_point``) inside the block; then
        restore the previous handlers and forget the signal (``dcl train`` called in-process)."""
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        self.install()
        self.defer, self.stop_point = True, stop_point
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.signum, self.defer, self.skipped_evaluation = None, False, False

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked data-loader worker: the main process handles the signal
        first = self.signum is None
        self.signum = signum
        if first:
            logger.warning("received %s: stopping %s", self.name, self.stop_point if self.defer else "now")
            if not self.defer:
                raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self, defer: bool) -> Iterator[None]:
        previous, self.defer = self.defer, defer
        try:
            yield
        finally:
            self.defer = previous


STOP = StopSignal()


def _agreed(flag: bool) -> bool:
    """True if ``flag`` is set on any worker (all workers must call this together)."""
    if comm.get_world_size() == 1:
        return flag
    # NCCL reduces CUDA tensors only; gloo (CPU workers) CPU tensors.
    on_gpu = torch.distributed.get_backend() == torch.distributed.Backend.NCCL
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _ignore_stop_signals(worker_id: int) -> None:
    """Data-loader ``worker_init_fn``: detectron2's seeding, plus immunity to the stop signals
    (Slurm may signal every process of the step; the main process decides when to stop)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    worker_init_reset_seed(worker_id)


# ----------------------------------------------------------------------------- checkpoints

class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are never seen half-written: the checkpoint goes to a
    temporary file that is renamed into place, then ``last_checkpoint`` is replaced the same way.

    ``saved_iteration`` is the trainer iteration of the last checkpoint this object wrote.
    """

    saved_iteration: Optional[int] = None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_path(save_file) as tmp:
            with open(tmp, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
        self.tag_last_checkpoint(basename)
        trainer_state = data.get("trainer")
        if isinstance(trainer_state, dict) and "iteration" in trainer_state:
            self.saved_iteration = trainer_state["iteration"]

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


# ----------------------------------------------------------------------------- data order

class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler that can start part-way into its infinite index stream.

    ``skip`` (per worker) indices are dropped from the start, so a resumed run continues the
    stream where the interrupted one stopped; ``seed`` is checkpointed for that.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle, seed)
        self.skip = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self):
        start = self._rank + self.skip * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


class _Deferred:
    """An iterable whose iterator starts nothing until the first item is requested (the
    trainer creates its iterator before resuming, i.e. before the sampler knows its offset)."""

    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        yield from self.iterable


class _DataOrderHook(hooks.HookBase):
    """Puts the training sampler's seed into checkpoints and restores it on resume."""

    def __init__(self, sampler: Optional[ResumableTrainingSampler]):
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {"sampler_seed": self.sampler.seed} if self.sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sampler is not None and "sampler_seed" in state:
            self.sampler.seed = state["sampler_seed"]


class _StopHook(hooks.HookBase):
    """Counts completed iterations and ends the loop, on every worker at the same iteration,
    once a stop signal was received."""

    def before_train(self) -> None:
        self.trainer.completed_iterations = self.trainer.start_iter
        STOP.defer = True

    def after_step(self) -> None:
        self.trainer.completed_iterations = self.trainer.iter + 1
        if _agreed(STOP.requested):
            raise TrainingInterrupted(STOP.signum or signal.SIGTERM)

    def after_train(self) -> None:
        STOP.defer = False


class _RecordHook(hooks.HookBase):
    """Keeps ``run.json``'s iteration current (main process)."""

    def __init__(self, record: "RunRecord"):
        self.record = record

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done % _RECORD_PERIOD == 0 or done == self.trainer.max_iter:
            self.record.update(iteration=done)


# ----------------------------------------------------------------------------- trainer

def _inference_dir(cfg: CfgNode, dataset_name: str) -> Path:
    base = Path(cfg.OUTPUT_DIR) / "inference"
    return base if len(cfg.DATASETS.TEST) <= 1 else base / dataset_name


def _eval_results_path(cfg: CfgNode) -> Path:
    return Path(cfg.OUTPUT_DIR) / "inference" / EVAL_RESULTS


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with: COCO evaluation (official pycocotools code when
    detectron2 has no compiled extension), :class:`AtomicCheckpointer`, a stop-signal hook, a
    resumable data order, and ``run.json`` progress updates."""

    def __init__(self, cfg: CfgNode, record: Optional["RunRecord"] = None):
        self._record = record
        self._train_sampler: Optional[ResumableTrainingSampler] = None
        self.completed_iterations = 0
        super().__init__(cfg)

    # -- data
    def build_train_loader(self, cfg: CfgNode):
        """detectron2's training loader (same dataset, mapper, sampler stream, batching) with a
        resumable sampler and signal-immune workers; other samplers use detectron2's loader."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return super().build_train_loader(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dicts))
        if self._train_sampler is None:  # the first loader is the trainer's (PreciseBN builds more)
            self._train_sampler = sampler
        dataset = ToIterableDataset(MapDataset(DatasetFromList(dicts, copy=False), DatasetMapper(cfg, True)), sampler)
        batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
            single = torchdata.DataLoader(dataset, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                          collate_fn=operator.itemgetter(0), worker_init_fn=_ignore_stop_signals)
            return _Deferred(AspectRatioGroupedDataset(single, batch_size))
        return _Deferred(torchdata.DataLoader(
            dataset, batch_size=batch_size, drop_last=True, num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=trivial_batch_collator, worker_init_fn=_ignore_stop_signals,
        ))

    # -- evaluation
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str):
        # detectron2's fast evaluator is C++ (detectron2._C); without it use pycocotools. Tasks
        # are explicit: inferred from the predictions, a model without detections (early in
        # training) would get no segm entry at all instead of NaN AP.
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=str(_inference_dir(cfg, dataset_name)),
                             use_fast_impl=dcl.compat.has_extension())

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Evaluate on ``DATASETS.TEST`` and write ``inference/detectron2_eval.json``; skipped
        (returns {}) once a stop signal was received, interruptible by one while it runs."""
        if _agreed(STOP.requested):
            logger.warning("evaluation skipped: %s received", STOP.name)
            STOP.skipped_evaluation = True
            return {}
        with STOP.deferred(False):
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.DATASETS.TEST:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            atomic_write_json(_eval_results_path(cfg), _plain(per_dataset))
        return results

    # -- hooks and checkpoints
    def build_hooks(self):
        self.checkpointer = AtomicCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        built = super().build_hooks()
        # After the LR scheduler and the periodic checkpointer, before evaluation and writers:
        # a stop skips the evaluation due at this iteration, and the writers still flush.
        position = next((i for i, h in enumerate(built) if isinstance(h, hooks.EvalHook)), len(built))
        extra = [_DataOrderHook(self._train_sampler), _StopHook()]
        if self._record is not None:
            extra.append(_RecordHook(self._record))
        return built[:position] + extra + built[position:]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.saved_iteration = self.start_iter - 1
        self.completed_iterations = self.start_iter
        if self._train_sampler is not None:
            self._train_sampler.skip = self.start_iter * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())

    def save_progress(self) -> None:
        """Checkpoint the completed iterations unless that checkpoint exists (main process)."""
        last = self.completed_iterations - 1
        if last < 0 or self.checkpointer.saved_iteration == last:
            return
        self.iter = last  # the trainer state in the checkpoint records this iteration
        self.checkpointer.save(f"model_{last:07d}")


def _plain(value: Any) -> Any:
    """Evaluation results as JSON types (detectron2 returns OrderedDicts of numpy floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


# ----------------------------------------------------------------------------- the job

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


def _command(args: argparse.Namespace) -> list[str]:
    command = ["dcl", "train"]
    for flag in ("config_file", "num_gpus", "num_machines", "machine_rank", "dist_url", "results_dir", "weights_dir"):
        value = getattr(args, flag, None)
        if value not in (None, ""):
            command += [f"--{flag.replace('_', '-')}", str(value)]
    command += [f"--{flag.replace('_', '-')}" for flag in ("resume", "eval_only") if getattr(args, flag, False)]
    return command + list(args.opts or [])


def _record_path(output_dir: Path, eval_only: bool) -> Path:
    path = output_dir / RUN_RECORD
    if eval_only and path.is_file():
        try:
            if read_json(path, "run record").get("mode") == "train":
                return output_dir / "inference" / RUN_RECORD
        except InputError:
            pass
    return path


def _copy_results(cfg: CfgNode, record_path: Path, results_dir: str, eval_only: bool) -> None:
    """Copy the small results of a finished run to ``results_dir`` (each file atomically)."""
    files = [(record_path, RUN_RECORD), (record_path.parent / "config.yaml", "config.yaml"),
             (_eval_results_path(cfg), EVAL_RESULTS)]
    if not eval_only:
        files.append((Path(cfg.OUTPUT_DIR) / "metrics.json", "metrics.json"))
    for source, name in files:
        if source.is_file():
            with atomic_path(Path(results_dir) / name) as tmp:
                shutil.copyfile(source, tmp)


def _worker(job: _Job) -> None:
    """One training/evaluation process (detectron2's ``launch`` calls it on every worker)."""
    cfg = load_config(job.config_file, job.opts)
    setup_args = argparse.Namespace(config_file=job.config_file, eval_only=job.eval_only, opts=job.opts,
                                    resume=job.resume)
    # config.yaml and log.txt go beside run.json: for an evaluation next to a training record,
    # OUTPUT_DIR/inference, so the training's own config.yaml is not overwritten.
    log_dir = str(Path(job.record_path).parent)
    setup_cfg = cfg.clone()
    setup_cfg.defrost()
    setup_cfg.OUTPUT_DIR = log_dir
    default_setup(setup_cfg, setup_args)
    setup_logger(log_dir, distributed_rank=comm.get_rank(), name="dcl")
    from dcl.datasets import register_datasets

    register_datasets()
    STOP.install()
    STOP.defer = True  # until the run record exists a signal is only recorded
    record = None
    if comm.is_main_process():
        record = RunRecord.begin(Path(job.record_path), resume=job.resume, fields=job.record_fields)
    trainer = None
    try:
        STOP.defer, STOP.stop_point = False, "after the current iteration"
        if STOP.requested:  # received during the set-up
            raise TrainingInterrupted(STOP.signum)
        if job.eval_only:
            model = Trainer.build_model(cfg)
            AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=job.resume)
            Trainer.test(cfg, model)
        else:
            trainer = Trainer(cfg, record)
            trainer.resume_or_load(resume=job.resume)
            if record is not None:
                record.start_iteration(trainer.start_iter)
            trainer.train()
        if STOP.skipped_evaluation:  # a signal after the last step: the final evaluation is still due
            raise TrainingInterrupted(STOP.signum or signal.SIGTERM)
    except TrainingInterrupted as stop:
        STOP.defer = True  # no second interruption while saving
        if trainer is not None:
            trainer.save_progress()
        comm.synchronize()  # other workers must not exit before the checkpoint is written
        if record is not None:
            record.close("interrupted", EXIT_INTERRUPTED, signal_name=signal.Signals(stop.signum).name,
                         iteration=trainer.completed_iterations if trainer is not None else None)
        logger.warning("%s; resume with --resume (exit code %d)", stop, EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BaseException as error:
        if STOP.requested and isinstance(error, Exception):
            # e.g. data-loader workers killed by the same signal: an interruption, not a crash.
            logger.warning("error after %s (%s): treating the run as interrupted", STOP.name, error)
            if trainer is not None:
                trainer.save_progress()
            if record is not None:
                record.close("interrupted", EXIT_INTERRUPTED, signal_name=STOP.name,
                             iteration=trainer.completed_iterations if trainer is not None else None)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if record is not None and record.data["status"] == "running":
            record.close("failed", 1, error=f"{type(error).__name__}: {error}",
                         iteration=trainer.completed_iterations if trainer is not None else None)
        raise
    if record is not None:
        record.close("finished", 0, iteration=cfg.SOLVER.MAX_ITER if not job.eval_only else None)
        if job.results_dir:
            _copy_results(cfg, Path(job.record_path), job.results_dir, job.eval_only)


# ----------------------------------------------------------------------------- command line

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
    parser.add_argument("--config-file", default="", metavar="FILE", help="detectron2 YAML config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint if it exists (else start from MODEL.WEIGHTS)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST only")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs (worker processes) per machine")
    parser.add_argument("--num-machines", type=int, default=None,
                        help="total number of machines (default: from a multi-node Slurm step, else 1)")
    parser.add_argument("--machine-rank", type=int, default=None,
                        help="rank of this machine (default: $SLURM_NODEID in a multi-node step, else 0)")
    parser.add_argument("--dist-url", default=None,
                        help="rendezvous URL, e.g. tcp://host:port (default: first Slurm node, else a free local port)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help=f"on success copy {RUN_RECORD}, metrics.json, config.yaml and {EVAL_RESULTS} here")
    parser.add_argument("--weights-dir", default=None, metavar="DIR",
                        help=f"where URL weights are looked up (default: ${dcl_weights.ENV_WEIGHTS_DIR}, else ./weights)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the command (config, weights, datasets, model on the CPU) without training")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.IMS_PER_BATCH 8 OUTPUT_DIR work_dirs/x")


def _check_devices(cfg: CfgNode, num_gpus: int, num_machines: int) -> None:
    if num_gpus < 1:
        raise InputError(f"--num-gpus must be at least 1, got {num_gpus}")
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise InputError("MODEL.DEVICE is cuda but no CUDA GPU is visible here; add `MODEL.DEVICE cpu` to run on the CPU")
        if num_gpus > available:
            raise InputError(f"--num-gpus {num_gpus} but this machine has {available} visible GPU(s)")
    elif device != "cpu" and num_gpus * num_machines != 1:
        raise InputError(f"MODEL.DEVICE {device} runs in one process: use --num-gpus 1 on one machine "
                         "(several workers need CUDA GPUs, or the CPU: MODEL.DEVICE cpu)")
    world = num_gpus * num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise InputError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
                         f"{world} worker(s) (--num-gpus x machines)")


def _check_datasets(cfg: CfgNode, eval_only: bool) -> None:
    known = set(DatasetCatalog.list())
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InputError(f"unknown dataset(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise InputError("DATASETS.TRAIN is empty: nothing to train on")


def _resolve_weights(cfg: CfgNode, resume: bool, weights_dir: Optional[str]) -> Optional[str]:
    """The local file to load as MODEL.WEIGHTS, or None when nothing needs resolving."""
    if resume and (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file():
        return None  # the last checkpoint is loaded, MODEL.WEIGHTS is not read
    spec = cfg.MODEL.WEIGHTS
    if not spec:
        return None
    local = dcl_weights.resolve(spec, weights_dir)
    if not dcl_weights.is_remote(spec) and not Path(local).is_file():
        raise InputError(f"MODEL.WEIGHTS file not found: {spec}")
    return local if local != spec else None


def _record_fields(args: argparse.Namespace, cfg: CfgNode, layout: DistributedLayout, weights: dict) -> dict:
    from dcl.info import environment_info

    info = environment_info()
    commit, dirty = git_state()
    on_gpu = str(cfg.MODEL.DEVICE).startswith("cuda")
    return {
        "mode": "eval-only" if args.eval_only else "train",
        "command": _command(args), "cwd": os.getcwd(), "config_file": args.config_file,
        "overrides": list(args.opts or []), "seed": cfg.SEED, "output_dir": str(Path(cfg.OUTPUT_DIR).resolve()),
        "git_commit": commit, "git_dirty": dirty, "host": socket.gethostname(), "slurm": slurm_job(),
        "gpus": {"count": args.num_gpus * layout.num_machines if on_gpu else 0,
                 "type": info["cuda_devices"][0] if on_gpu and info["cuda_devices"] else None},
        "versions": {**info["versions"], "detectron2": info["detectron2"]["version"]},
        "compat_shims": info["compat_shims"],
        "iteration": None if args.eval_only else 0,
        "max_iter": None if args.eval_only else cfg.SOLVER.MAX_ITER,
        "distributed": dataclasses.asdict(layout) | {"num_gpus_per_machine": args.num_gpus},
        "weights": weights,
    }


def _dry_run(cfg: CfgNode, args: argparse.Namespace, layout: DistributedLayout, weights: dict) -> int:
    from detectron2.modeling import build_model

    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    model = build_model(cpu_cfg)
    roi_heads = getattr(model, "roi_heads", None)
    mask_head = getattr(roi_heads, "mask_head", None)
    summary = {
        "config_file": args.config_file, "mode": "eval-only" if args.eval_only else "train",
        "meta_architecture": type(model).__name__,
        "roi_heads": type(roi_heads).__name__ if roi_heads is not None else None,
        "mask_head": type(mask_head).__name__ if mask_head is not None else None,
        "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        "dcl": dict(cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS) if is_dcl_model_config(cfg) else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        "solver": {"ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "base_lr": cfg.SOLVER.BASE_LR,
                   "max_iter": cfg.SOLVER.MAX_ITER, "steps": list(cfg.SOLVER.STEPS)},
        "device": cfg.MODEL.DEVICE, "num_gpus_per_machine": args.num_gpus,
        "distributed": dataclasses.asdict(layout), "weights": weights, "output_dir": cfg.OUTPUT_DIR,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _forward_signals_to_workers() -> None:
    """In the launching process: pass stop signals on to the worker processes."""
    import multiprocessing

    def forward(signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)


def _with_seed(cfg: CfgNode, seed: int) -> CfgNode:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = seed
    cfg.freeze()
    return cfg


def _take_trailing_options(args: argparse.Namespace) -> None:
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
            options += tokens[i:i + width]
            i += width
        else:
            pairs += tokens[i:i + 2]
            i += 2
    if options:
        parser.parse_args(options, namespace=args)  # unknown options: usage error, exit 2
    args.opts = pairs


def run(args: argparse.Namespace) -> int:
    # Slurm's pre-timeout signal may come up to a minute before the requested offset, so also
    # during the set-up: record it, and end the run as interrupted once its run record exists.
    with STOP.handling(stop_point="once the run is set up"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    _take_trailing_options(args)
    opts = args.opts
    cfg = load_config(args.config_file, opts)
    layout = resolve_distributed(args.num_machines, args.machine_rank, args.dist_url)
    if not args.dry_run:
        _check_devices(cfg, args.num_gpus, layout.num_machines)
    from dcl.datasets import register_datasets

    register_datasets()
    _check_datasets(cfg, args.eval_only)
    local_weights = _resolve_weights(cfg, args.resume, args.weights_dir)
    weights = {"requested": cfg.MODEL.WEIGHTS, "resolved": local_weights or cfg.MODEL.WEIGHTS}
    if args.dry_run:
        return _dry_run(cfg, args, layout, weights)
    worker_opts = opts + (["MODEL.WEIGHTS", local_weights] if local_weights else [])
    if cfg.SEED < 0:
        # Draw the "random" seed here, so run.json and config.yaml say which one was used.
        cfg = _with_seed(cfg, int.from_bytes(os.urandom(4), "little") % 2**31)
        worker_opts += ["SEED", str(cfg.SEED)]
    output_dir = Path(cfg.OUTPUT_DIR)
    job = _Job(
        config_file=args.config_file, opts=worker_opts, resume=args.resume, eval_only=args.eval_only,
        results_dir=args.results_dir, record_fields=_record_fields(args, cfg, layout, weights),
        record_path=str(_record_path(output_dir, args.eval_only)),
    )
    world_size = args.num_gpus * layout.num_machines
    if world_size == 1:
        try:
            _worker(job)
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0
    if STOP.requested:  # signalled during the set-up: start no workers, record the interruption
        if layout.machine_rank == 0:
            RunRecord.begin(Path(job.record_path), resume=job.resume, fields=job.record_fields).close(
                "interrupted", EXIT_INTERRUPTED, signal_name=STOP.name)
        return EXIT_INTERRUPTED
    _forward_signals_to_workers()
    return _launch_workers(job, args.num_gpus, layout, backend="nccl" if str(cfg.MODEL.DEVICE).startswith("cuda") else "gloo")


def _launch_workers(job: _Job, num_gpus: int, layout: DistributedLayout, backend: str) -> int:
    """Run ``_worker(job)`` in ``num_gpus`` processes of this machine; the exit code of the run."""
    result = launch(_worker, num_gpus, num_machines=layout.num_machines, machine_rank=layout.machine_rank,
                    dist_url=layout.dist_url, backend=backend, args=(job,), clean_exits=(0, EXIT_INTERRUPTED))
    if result.failed is None:
        return EXIT_INTERRUPTED if EXIT_INTERRUPTED in result.exit_codes else 0
    code = result.exit_codes[result.failed]
    rank = layout.machine_rank * num_gpus + result.failed
    reason = f"worker {rank} {'exited with code ' + str(code) if code >= 0 else 'killed by ' + signal.Signals(-code).name}"
    _mark_failed_if_running(Path(job.record_path), 1, reason)
    print(f"dcl train: error: {reason}; the other workers were stopped", file=sys.stderr)
    return 1


def _mark_failed_if_running(path: Path, exit_code: int, reason: str) -> None:
    """A worker died without closing run.json (killed, crashed hard): record the failure."""
    if exit_code == EXIT_INTERRUPTED or not path.is_file():
        return
    try:
        data = read_json(path, "run record")
    except InputError:
        return
    if data.get("status") == "running":
        data.update(status="failed", exit_code=exit_code, end_time=now(), error=reason)
        if data.get("attempts"):
            data["attempts"][-1].update(end_time=data["end_time"], status="failed")
        atomic_write_json(path, data)
