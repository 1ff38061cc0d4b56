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

Preemption. SIGTERM, SIGUSR1 or SIGINT (Slurm sends SIGTERM at a time limit and on preemption; ask for
an early one with ``sbatch --signal=TERM@300``, or ``B:TERM@300`` when ``dcl train`` runs in the
batch script itself rather than under ``srun``) lets the current iteration finish, saves a checkpoint at it
(atomically: temporary file + rename, then ``last_checkpoint`` the same way), marks ``run.json``
``interrupted`` and exits with :data:`EXIT_INTERRUPTED`. During an evaluation the signal stops it
at once; during the set-up (Slurm may send its early signal up to a minute before the requested
offset) the run ends as interrupted before its first iteration. ``--resume`` continues the run
as if it had not stopped: optimizer and scheduler state are checkpointed, batches come from a
resumable index stream (:class:`ResumableTrainingSampler`), and every RNG is seeded per
iteration and per image (README, "The resume guarantee"). In a Slurm batch job ``--max-chunks N``
requeues the interrupted job itself (:func:`dcl.slurm.requeue_own_job`). Data-loader workers
ignore these signals, so a signal sent to the whole process group cannot kill them mid-step;
on any exit they are shut down (and killed if need be) before the process ends.

Exit codes: 0 finished; 1 failed (bad input: a one-line message; a crash: the traceback; both
recorded in ``run.json``); 2 command-line usage error; 75 (``EX_TEMPFAIL``) interrupted: run the
same command with ``--resume``; 130 a second Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import random
import pickle
import shutil
import signal
import socket
import sys
import traceback
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
import numpy as np
import torch
import torch.utils.data as torchdata
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import dcl.modeling  # noqa: F401  (registers the DCL heads)
from dcl.refinemask import add_refinemask_config  # (registers the RefineMask heads)
from dcl import early_signals
from dcl import weights as dcl_weights
from dcl.experiments import SEED_LIMIT
from dcl.io import InputError, atomic_path, atomic_write_json, atomic_write_text, read_json, \
    remove_stale_temporaries, staging_directory
from dcl.launch import launch
from dcl.modeling import add_dcl_config, check_dcl_config, is_dcl_model_config
from dcl.runrecord import RUN_RECORD, RunRecord, git_state, now
from dcl.slurm import DistributedLayout, requeue_own_job, resolve_distributed, slurm_job

__all__ = [
    "EXIT_INTERRUPTED",
    "STOP_SIGNALS",
    "EVAL_RESULTS",
    "TTA_FOLDER",
    "AtomicCheckpointer",
    "AtomicCOCOEvaluator",
    "ExpectedResultsError",
    "check_expected_results",
    "ResumableTrainingSampler",
    "StopSignal",
    "Trainer",
    "TrainingInterrupted",
    "load_config",
    "refuse_unsafe_yaml",
    "add_arguments",
    "run",
]

logger = logging.getLogger("dcl.train")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, run again with --resume
STOP_SIGNALS = early_signals.STOP_SIGNALS
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
    add_refinemask_config(cfg)
    if config_file:
        if not Path(config_file).is_file():
            raise InputError(f"config file not found: {config_file}")
        refuse_unsafe_yaml(config_file)
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
    if cfg.SEED >= SEED_LIMIT:
        raise InputError(f"SEED {cfg.SEED} is out of range: numpy takes seeds below 2^32 (< 0: random)")
    cfg.freeze()
    return cfg


def refuse_unsafe_yaml(config_file: str) -> None:
    """Parse ``config_file`` and its ``_BASE_`` files as plain YAML first: detectron2's
    ``merge_from_file`` falls back to ``yaml.unsafe_load``, which runs ``!!python/...`` tags.

    Raises:
        InputError: a file is not plain YAML (a Python tag, a syntax error), naming it.
    """
    seen = set()
    path = config_file
    while path not in seen:  # (a _BASE_ cycle: detectron2 reports it)
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as stream:
                data = yaml.safe_load(stream)
        except yaml.constructor.ConstructorError as error:
            mark = error.problem_mark
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise InputError(f"{path}{where}: {error.problem}; config files must be plain YAML "
                             "(Python tags are refused: they run code)") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise InputError(f"{path}: not a readable YAML file: {' '.join(str(error).split())}") from None
        base = data.get("_BASE_") if isinstance(data, dict) else None
        if base is None or not isinstance(base, str):
            return
        # detectron2's rule for _BASE_: ~ expanded, relative to the including file; URLs it fetches.
        base = os.path.expanduser(base)
        if base.startswith(("https://", "http://")):
            return
        path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)


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
        early = early_signals.take()  # received before this module was imported
        if self.signum is None and early is not None:
            logger.warning("received %s during start-up: stopping %s", signal.Signals(early).name,
                           self.stop_point)
            self.signum = early
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
        if not first and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort without waiting for the checkpoint
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

    def _load_file(self, filename: str) -> dict:
        """detectron2's loading, refusing files that could run code: ``.pkl`` weights must be
        plain data (checked by a restricted unpickler first), other files load with
        ``torch.load(weights_only=True)`` (PyTorch's default), whose refusal is one line."""
        if filename.endswith(".pkl"):
            dcl_weights.check_plain_pickle(filename)  # then read a second time, by detectron2
        try:
            return super()._load_file(filename)
        except pickle.UnpicklingError as error:
            raise InputError(f"weights file {filename} is refused by torch.load(weights_only=True): "
                             f"{_torch_load_reason(error)}; only checkpoints of tensors and plain data are loaded") from None
        except (RuntimeError, EOFError) as error:  # e.g. a truncated zip archive
            raise InputError(f"weights file {filename} cannot be loaded (corrupted, or not a checkpoint?): "
                             f"{_torch_load_reason(error)}") from None


def _torch_load_reason(error: BaseException) -> str:
    """Why torch.load refused a file, in one line: PyTorch's message is a page of advice (its first
    paragraph) around the reason (e.g. "Unsupported global: GLOBAL posix.system ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("(1)", "(2)", "Check the documentation"))]
    reason = lines[0].removeprefix("WeightsUnpickler error: ").split(". ")[0] if lines else ""
    return reason or type(error).__name__


# ----------------------------------------------------------------------------- data order

class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler as a stream of batches that can start part-way.

    Each rank takes its share of detectron2's infinite index stream (positions ``rank``,
    ``rank + world``, ...) and forms batches of ``batch_size`` from it, grouped by aspect ratio
    like detectron2's ``AspectRatioGroupedDataset`` (landscape vs portrait, from the dataset
    dicts' width/height) when ``aspect_ratios`` is given. A batch is a list of
    ``(position, index)``: the global stream position seeds that image's augmentation.
    Grouping works on indices only, so ``skip`` (batches) makes a resumed run start at exactly
    the batch the interrupted one would have drawn next; ``seed`` is checkpointed for that.
    """

    def __init__(self, size: int, batch_size: int, aspect_ratios: Optional[list[int]] = None,
                 shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle, seed)
        self.batch_size = batch_size
        self.aspect_ratios = aspect_ratios  # per index: 0 landscape, 1 portrait
        self.skip = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return itertools.islice(self._batches(), self.skip, None)

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        positions = itertools.count(self._rank, self._world_size)
        indices = itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)
        buckets: list[list[tuple[int, int]]] = [[], []]
        for position, index in zip(positions, indices):
            bucket = buckets[self.aspect_ratios[index] if self.aspect_ratios else 0]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]


def _sample_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]) % 2**31


class _SeededBatchMapper(torchdata.Dataset):
    """Maps a batch of ``(position, index)`` to detectron2's list of dicts, each image with
    every RNG seeded from (sampler seed, stream position): augmentation is a function of the
    position alone, whichever worker maps it and however often the workers restart."""

    def __init__(self, dicts: list[dict], mapper, sampler: ResumableTrainingSampler):
        self.dicts, self.mapper, self.sampler = dicts, mapper, sampler

    def __getitem__(self, batch: list[tuple[int, int]]) -> list[dict]:
        return [self._map(position, index) for position, index in batch]

    def _map(self, position: int, index: int) -> dict:
        for attempt in range(10):
            seed_all_rng(_sample_seed(self.sampler.seed, position, attempt))
            mapped = self.mapper(self.dicts[index])
            if mapped is not None:
                return mapped
            # As detectron2's MapDataset: the mapper rejected the image, take another one.
            index = random.randrange(len(self.dicts))
        raise RuntimeError(f"the data mapper rejected 10 images in a row (last: {self.dicts[index].get('file_name')})")


def _as_is(batch: list[dict]) -> list[dict]:
    return batch


class _LazyLoader:
    """A data loader whose iterator starts nothing until the first batch is requested (the
    trainer creates its iterator before resuming, i.e. before the sampler knows its offset),
    and whose worker processes :meth:`close` ends for certain."""

    def __init__(self, loader: torchdata.DataLoader):
        self.loader = loader
        self._iterator = None

    def __iter__(self) -> Iterator[list[dict]]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        yield from self._iterator

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        workers = list(getattr(iterator, "_workers", []))
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # asks the workers to exit and joins them for a few seconds
        _kill(workers)


def _kill(processes) -> None:
    """SIGKILL what is still alive: the loader workers ignore the stop signals, which is also
    what the interpreter's exit handler sends before it waits for them forever."""
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)


def _kill_loader_workers() -> None:
    """Any data-loader worker of this process still alive (e.g. an evaluation loader whose
    iterator an exception kept): kill it, so the process can exit."""
    import multiprocessing

    from torch.utils.data._utils.worker import _worker_loop

    _kill([p for p in multiprocessing.active_children() if getattr(p, "_target", None) is _worker_loop])


class _DataOrderHook(hooks.HookBase):
    """Puts the training sampler's seed into checkpoints and restores it on resume."""

    def __init__(self, sampler: Optional[ResumableTrainingSampler]):
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {"sampler_seed": self.sampler.seed} if self.sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sampler is not None and "sampler_seed" in state:
            self.sampler.seed = state["sampler_seed"]


class _IterationSeedHook(hooks.HookBase):
    """Seeds every RNG of the training process from (SEED, iteration, rank) before each step,
    so what a step draws (RoI and DCL point sampling) does not depend on what ran before it:
    a resumed run draws what the uninterrupted one drew."""

    def __init__(self, seed: int):
        self.seed = seed

    def before_step(self) -> None:
        seed_all_rng(_sample_seed(self.seed, self.trainer.iter, comm.get_rank()))


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


class AtomicCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator whose output files (``coco_instances_results.json``, the
    workflow's predictions, and ``instances_predictions.pth``) appear whole or not at all: it
    writes them into a staging directory, from which each is renamed into place."""

    def evaluate(self, img_ids=None):
        if not self._output_dir or not comm.is_main_process():
            return super().evaluate(img_ids)
        output_dir = self._output_dir
        try:
            with staging_directory(output_dir) as staging:
                self._output_dir = str(staging)
                return super().evaluate(img_ids)
        finally:
            self._output_dir = output_dir


def _prepare_output_dir(output_dir: Path) -> None:
    """Before a run starts in ``output_dir``: remove the temporaries a killed attempt left
    (checkpoints being written, the evaluator's staging directory), and cut a torn last line
    off ``metrics.json`` (detectron2 appends to it; a new line must not be glued to a fragment)."""
    if not output_dir.is_dir():
        return
    for path in remove_stale_temporaries(output_dir):
        logger.warning("removed %s, left by an interrupted write", path)
    metrics = output_dir / "metrics.json"
    if metrics.is_file():
        with open(metrics, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())
                logger.warning("%s: removed a torn last line (%d bytes) left by a killed run", metrics,
                               len(data) - data.rfind(b"\n") - 1)


# ----------------------------------------------------------------------------- trainer

def _inference_dir(cfg: CfgNode, dataset_name: str, folder: str = "inference") -> Path:
    base = Path(cfg.OUTPUT_DIR) / folder
    return base if len(cfg.DATASETS.TEST) <= 1 else base / dataset_name


def _eval_results_path(cfg: CfgNode, folder: str = "inference") -> Path:
    return Path(cfg.OUTPUT_DIR) / folder / EVAL_RESULTS


TTA_FOLDER = "inference_TTA"  # train_net.py's folder for the test-time-augmentation evaluation


class ExpectedResultsError(RuntimeError):
    """``TEST.EXPECTED_RESULTS`` not met (detectron2's ``verify_results`` failed)."""


def check_expected_results(cfg: CfgNode, results: dict) -> None:
    """detectron2's ``verify_results``, as train_net.py calls it, with its ``sys.exit(1)`` turned
    into an error that says what was expected and what came out (run.json records it)."""
    from detectron2.evaluation import verify_results

    expected = cfg.TEST.EXPECTED_RESULTS
    got = {f"{task} {metric}": results.get(task, {}).get(metric) for task, metric, _, _ in expected}
    wanted = "; ".join(f"{task} {metric} {value} +- {tolerance}" for task, metric, value, tolerance in expected)
    missing = sorted({task for task, *_ in expected} - set(results))
    if not missing:
        try:
            verify_results(cfg, results)
            return
        except SystemExit:  # it logged the comparison
            pass
    raise ExpectedResultsError(f"TEST.EXPECTED_RESULTS not met: expected {wanted}; got {got}"
                               + (f" (no {', '.join(missing)} results; there are {', '.join(results)})"
                                  if missing else ""))


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with: COCO evaluation (official pycocotools code when
    detectron2 has no compiled extension), :class:`AtomicCheckpointer`, a stop-signal hook, a
    resumable data order, and ``run.json`` progress updates."""

    def __init__(self, cfg: CfgNode, record: Optional["RunRecord"] = None):
        self._record = record
        self._train_sampler: Optional[ResumableTrainingSampler] = None
        self._loaders: list[_LazyLoader] = []
        self.completed_iterations = 0
        super().__init__(cfg)

    # -- data
    def build_train_loader(self, cfg: CfgNode):
        """detectron2's training data (same dataset, mapper, index stream and aspect-ratio
        batches) from a resumable batch sampler, with per-image seeded augmentation and
        signal-immune workers; other samplers use detectron2's loader."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return super().build_train_loader(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        aspect_ratios = [0 if d["width"] > d["height"] else 1 for d in dicts] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
        sampler = ResumableTrainingSampler(len(dicts), cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), aspect_ratios)
        if self._train_sampler is None:  # the first loader is the trainer's (PreciseBN builds more)
            self._train_sampler = sampler
        loader = _LazyLoader(torchdata.DataLoader(
            _SeededBatchMapper(dicts, DatasetMapper(cfg, True), sampler), sampler=sampler, batch_size=None,
            num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_as_is, worker_init_fn=_ignore_stop_signals,
            # Its own generator: starting the workers (on the first batch, also of a resumed run)
            # must not draw from the training's RNG.
            generator=torch.Generator().manual_seed(sampler.seed),
        ))
        self._loaders.append(loader)
        return loader

    def close_data_loaders(self) -> None:
        for loader in self._loaders:
            loader.close()

    # -- evaluation
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        # detectron2's fast evaluator is C++ (detectron2._C); without it use pycocotools. Tasks
        # are explicit: inferred from the predictions, a model without detections (early in
        # training) would get no segm entry at all instead of NaN AP.
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        coco = AtomicCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder or str(_inference_dir(cfg, dataset_name)),
                                   use_fast_impl=dcl.compat.has_extension())
        from dcl.cityscapes_evaluator import CityscapesAPEvaluator, is_cityscapes

        if cfg.MODEL.MASK_ON and is_cityscapes(dataset_name):
            # The paper's Cityscapes metric beside COCO AP, as the original train_net.py printed it.
            return DatasetEvaluators([coco, CityscapesAPEvaluator(dataset_name)])
        return coco

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Evaluate on ``DATASETS.TEST`` and write ``inference/detectron2_eval.json``; skipped
        (returns {}) once a stop signal was received, interruptible by one while it runs."""
        return cls._evaluate(cfg, model, evaluators, "inference")

    @classmethod
    def _evaluate(cls, cfg: CfgNode, model, evaluators, folder: str):
        if _agreed(STOP.requested):
            logger.warning("evaluation skipped: %s received", STOP.name)
            STOP.skipped_evaluation = True
            return {}
        with STOP.deferred(False):
            results = super(Trainer, cls).test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.DATASETS.TEST:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            atomic_write_json(_eval_results_path(cfg, folder), _plain(per_dataset))
        return results

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model):
        """``TEST.AUG.ENABLED``: the evaluation with detectron2's ``GeneralizedRCNNWithTTA``, as
        train_net.py runs it: evaluators writing to ``OUTPUT_DIR/inference_TTA`` (with its
        ``detectron2_eval.json``), result keys suffixed ``_TTA``."""
        from detectron2.modeling import GeneralizedRCNNWithTTA

        logger.info("Running inference with test-time augmentation ...")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=str(_inference_dir(cfg, name, TTA_FOLDER)))
                      for name in cfg.DATASETS.TEST]
        results = cls._evaluate(cfg, GeneralizedRCNNWithTTA(cfg, model), evaluators, TTA_FOLDER)
        return {f"{key}_TTA": value for key, value in results.items()}

    def train(self):
        """DefaultTrainer.train, with a failed ``TEST.EXPECTED_RESULTS`` check raising
        :class:`ExpectedResultsError` instead of detectron2's bare ``sys.exit(1)``."""
        super(DefaultTrainer, self).train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if not hasattr(self, "_last_eval_results"):
                raise ExpectedResultsError("TEST.EXPECTED_RESULTS is set but training ran no evaluation")
            check_expected_results(self.cfg, self._last_eval_results)
            return self._last_eval_results

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
        built = [_IterationSeedHook(self.cfg.SEED)] + built[:position] + extra + built[position:]
        if self.cfg.TEST.AUG.ENABLED:
            # train_net.py's TTA evaluation after the last iteration, here before the writers, so
            # its results reach metrics.json and TensorBoard too.
            tta = hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))
            writer = next((i for i, h in enumerate(built) if isinstance(h, hooks.PeriodicWriter)), len(built))
            built.insert(writer, tta)
        return built

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.saved_iteration = self.start_iter - 1
        self.completed_iterations = self.start_iter
        if self._train_sampler is not None:
            self._train_sampler.skip = self.start_iter  # one batch per iteration

    # The optimizer's state (SGD momentum, and the LR the scheduler last set) belongs to the
    # checkpoint: detectron2 v0.6's DefaultTrainer saves only its hooks' states (later versions
    # add this same entry).
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])
        else:  # an older checkpoint: at least the LR of the restored schedule
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr

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
    for flag in ("config_file", "num_gpus", "num_machines", "machine_rank", "dist_url", "results_dir", "weights_dir",
                 "max_chunks"):
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


def _end_interrupted(trainer: Optional[Trainer], record: Optional[RunRecord], signal_name: Optional[str]) -> None:
    """Checkpoint the completed iterations and record the interruption (every worker calls it)."""
    STOP.defer = True  # no second interruption while saving
    if trainer is not None:
        trainer.save_progress()
    comm.synchronize()  # other workers must not exit before the checkpoint is written
    if record is not None:
        record.close("interrupted", EXIT_INTERRUPTED, signal_name=signal_name,
                     iteration=trainer.completed_iterations if trainer is not None else None)


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
            results = Trainer.test(cfg, model)
            if cfg.TEST.AUG.ENABLED:  # as train_net.py: plain and TTA results, then the check
                results.update(Trainer.test_with_TTA(cfg, model))
            if comm.is_main_process() and not STOP.skipped_evaluation:
                check_expected_results(cfg, results)
        else:
            trainer = Trainer(cfg, record)
            trainer.resume_or_load(resume=job.resume)
            if record is not None:
                record.start_iteration(trainer.start_iter)
            trainer.train()
        if STOP.skipped_evaluation:  # a signal after the last step: the final evaluation is still due
            raise TrainingInterrupted(STOP.signum or signal.SIGTERM)
    except TrainingInterrupted as stop:
        _end_interrupted(trainer, record, signal.Signals(stop.signum).name)
        logger.warning("%s; resume with --resume (exit code %d)", stop, EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BaseException as error:
        if STOP.requested and isinstance(error, Exception):
            # e.g. data-loader workers killed by the same signal: an interruption, not a crash.
            logger.warning("error after %s (%s): treating the run as interrupted", STOP.name, error)
            _end_interrupted(trainer, record, STOP.name)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if record is not None and record.data["status"] == "running":
            record.close("failed", 1, error=f"{type(error).__name__}: {error}",
                         iteration=trainer.completed_iterations if trainer is not None else None)
        raise
    finally:
        if trainer is not None:
            trainer.close_data_loaders()
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
    parser.add_argument("--max-chunks", type=int, default=None, metavar="N",
                        help="in a Slurm batch job: when interrupted, requeue the job (scontrol requeue) "
                             "to resume, until the run has had N attempts")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the command (config, weights, datasets, model on the CPU) without training")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.IMS_PER_BATCH 8 OUTPUT_DIR work_dirs/x")


def _check_devices(cfg: CfgNode, num_gpus: int, num_machines: int) -> None:
    if num_gpus < 1:
        raise InputError(f"--num-gpus must be at least 1, got {num_gpus}")
    if cfg.SEED + num_gpus * num_machines > SEED_LIMIT:  # detectron2 seeds rank r with SEED + r
        raise InputError(f"SEED {cfg.SEED} + one per worker ({num_gpus * num_machines}) is out of numpy's "
                         "seed range (below 2^32)")
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
    local = dcl_weights.resolve(spec, weights_dir)  # a URL's file: checked against its recorded digest
    if not dcl_weights.is_remote(spec):
        if not Path(local).is_file():
            raise InputError(f"MODEL.WEIGHTS file not found: {spec}")
        dcl_weights.verify(local, record_if_missing=False)  # a downloaded file named by its path
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
        try:
            code = _run(args)
            if code == EXIT_INTERRUPTED and args.max_chunks is not None:
                _requeue_for_the_next_chunk(args)
            return code
        except InputError:
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
            _kill_loader_workers()


def _requeue_for_the_next_chunk(args: argparse.Namespace) -> None:
    """An interrupted training in a Slurm batch job continues in the same job, requeued: the
    workflow sees one job however many time limits or pre-emptions it takes (``--max-chunks``)."""
    cfg = load_config(args.config_file, args.opts)
    try:
        attempts = len(read_json(_record_path(Path(cfg.OUTPUT_DIR), False), "run record").get("attempts", []))
    except InputError as error:
        logger.warning("not requeued: %s", error)
        return
    logger.warning("%s", requeue_own_job(args.max_chunks, attempts))


def _run(args: argparse.Namespace) -> int:
    _take_trailing_options(args)
    if args.max_chunks is not None and args.max_chunks < 1:
        raise InputError(f"--max-chunks must be at least 1, got {args.max_chunks}")
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
    if layout.machine_rank == 0 and not args.eval_only:  # a training owns its OUTPUT_DIR
        _prepare_output_dir(output_dir)
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
