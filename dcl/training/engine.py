"""The training engine of ``dcl train``: detectron2's ``DefaultTrainer`` made interruptible and resumable.

:class:`Trainer` adds to ``DefaultTrainer``: COCO evaluation (official pycocotools code when
detectron2 has no compiled extension; with the Cityscapes AP on Cityscapes), whose output files
appear whole (:class:`AtomicCOCOEvaluator`); atomic checkpoints that refuse weights which could
run code (:class:`AtomicCheckpointer`); the optimizer state in checkpoints; the resumable data
order of :mod:`dcl.training.sampler` and per-iteration seeding of every RNG, so a resumed run repeats
the uninterrupted one; a stop hook and interruptible evaluation (:mod:`dcl.training.preemption`); and
``run.json`` progress updates (:mod:`dcl.runrecord`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import weakref
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import dcl.compat  # (before any detectron2 module)
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventWriter, get_event_storage

from dcl.data import weights as dcl_weights
from dcl.io import (
    InputError,
    OutputError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
    staging_directory,
)
from dcl.layout import INFERENCE_DIR, TRAINING_METRICS
from dcl.training.preemption import StopHook, StopSignal, agreed
from dcl.runrecord import RUN_RECORD, RunRecord
from dcl.training.sampler import LazyLoader, ResumableTrainingSampler, build_train_loader, sample_seed

if TYPE_CHECKING:
    from dcl.tracking import Tracker

__all__ = [
    "EVAL_RESULTS",
    "TTA_FOLDER",
    "AtomicCheckpointer",
    "AtomicCOCOEvaluator",
    "ExpectedResultsError",
    "Trainer",
    "TrackingWriter",
    "check_expected_results",
    "copy_results",
    "prepare_output_dir",
]

logger = logging.getLogger("dcl.training.train")

EVAL_RESULTS = "detectron2_eval.json"
TTA_FOLDER = "inference_TTA"  # train_net.py's folder for the test-time-augmentation evaluation
_RECORD_PERIOD = 20  # iterations between run.json progress updates (as detectron2's writers)


# ----------------------------------------------------------------------------- checkpoints


PERIODIC_CHECKPOINT = re.compile(r"model_(\d{7})\.pth")  # detectron2's model_{iter:07d}.pth
FINAL_CHECKPOINT = "model_final"


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are never seen half-written: the checkpoint goes to a
    temporary file that is renamed into place, then ``last_checkpoint`` is replaced the same way.

    ``keep_periodic``: keep only the newest so many periodic checkpoints (``model_<iter>.pth``,
    with the optimizer state: what a resume needs) in ``save_dir``, also those of earlier
    attempts; None keeps all (detectron2's default). ``model_final.pth`` holds the weights and
    the iteration only: the optimizer state (as large again) is of no use once training is over.
    ``saved_iteration`` is the trainer iteration of the last checkpoint this object wrote.
    """

    saved_iteration: Optional[int] = None
    keep_periodic: Optional[int] = None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if name == FINAL_CHECKPOINT and isinstance(data.get("trainer"), dict):
            # The iteration only (a resume of a finished run starts past MAX_ITER): no optimizer,
            # scheduler or hook state.
            data = {"model": data["model"], "trainer": {"iteration": data["trainer"]["iteration"]}, **kwargs}
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_path(save_file) as tmp:
            with open(tmp, "wb") as f:
                try:
                    torch.save(data, f)
                except RuntimeError as error:  # PyTorch's zip writer: "[enforce fail ...] unexpected pos"
                    free = shutil.disk_usage(self.save_dir).free / 1e6
                    raise OutputError(
                        f"cannot write checkpoint {save_file}: the write failed ({free:.0f} MB free: "
                        f"disk full or over quota?): {str(error).splitlines()[0]}"
                    ) from None
                f.flush()
                os.fsync(f.fileno())
        self.tag_last_checkpoint(basename)
        trainer_state = data.get("trainer")
        if isinstance(trainer_state, dict) and "iteration" in trainer_state:
            self.saved_iteration = trainer_state["iteration"]
        if self.keep_periodic is not None and PERIODIC_CHECKPOINT.fullmatch(basename):
            self.remove_old_checkpoints(self.keep_periodic)

    def remove_old_checkpoints(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` periodic checkpoints of ``save_dir`` (never the one
        ``last_checkpoint`` names); the names deleted."""
        periodic = sorted(
            (int(match.group(1)), path.name)
            for path in Path(self.save_dir).iterdir()
            if (match := PERIODIC_CHECKPOINT.fullmatch(path.name))
        )
        last = os.path.basename(self.get_checkpoint_file() or "")
        removed = [name for _, name in periodic[: max(0, len(periodic) - keep)] if name != last]
        for name in removed:
            os.remove(os.path.join(self.save_dir, name))
            self.logger.info("Removed %s (keeping the newest %d periodic checkpoints)", name, keep)
        return removed

    def get_checkpoint_file(self) -> str:
        """The checkpoint a resume loads: the one ``last_checkpoint`` names, if that is a
        checkpoint file in ``save_dir``; else (missing, empty, torn, naming a missing file or one
        outside ``save_dir``) the newest valid checkpoint there, saying so; "" if there is none."""
        named = super().get_checkpoint_file()
        if named and _is_checkpoint_in(named, self.save_dir):
            return named
        candidates = sorted(
            (path for path in Path(self.save_dir).glob("model_*.pth") if _is_checkpoint_in(str(path), self.save_dir)),
            key=lambda path: (path.stem == FINAL_CHECKPOINT, path.stem),  # model_final, then the highest iteration
            reverse=True,
        )
        if candidates:
            reason = f"names {named!r}, which is not a checkpoint in it" if named else "is missing or empty"
            self.logger.warning("%s/last_checkpoint %s: resuming from %s", self.save_dir, reason, candidates[0].name)
            return str(candidates[0])
        return ""

    def has_checkpoint(self) -> bool:
        return bool(self.get_checkpoint_file())

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
            raise InputError(
                f"weights file {filename} is refused by torch.load(weights_only=True): "
                f"{_torch_load_reason(error)}; only checkpoints of tensors and plain data are loaded"
            ) from None
        except (RuntimeError, EOFError, IndexError, KeyError, ValueError, TypeError) as error:
            # A truncated zip archive, or a file that is not a checkpoint at all (a text or HTML
            # file read as a legacy pickle fails anywhere in the unpickler).
            raise InputError(
                f"weights file {filename} cannot be loaded (corrupted, or not a checkpoint?): "
                f"{_torch_load_reason(error)}"
            ) from None


def _is_checkpoint_in(path: str, folder: str) -> bool:
    """``path`` is a whole ``torch.save`` file (a zip archive with its directory) in ``folder``."""
    resolved, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.dirname(resolved) == folder and os.path.isfile(resolved) and zipfile.is_zipfile(resolved)


def _torch_load_reason(error: BaseException) -> str:
    """Why torch.load refused a file, in one line: PyTorch's message is a page of advice (its first
    paragraph) around the reason (e.g. "Unsupported global: GLOBAL posix.system ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Weights only load failed"):
        lines = [
            line
            for line in lines[1:]
            if not line.startswith(("(1)", "(2)", "Check the documentation", "Please file an issue"))
        ]
        if lines and lines[0].startswith("Unsupported operand"):  # no pickle at all: text, HTML
            return f"not a PyTorch checkpoint ({lines[0]})"
    reason = lines[0].removeprefix("WeightsUnpickler error: ").split(". ")[0] if lines else ""
    return reason or f"not a PyTorch checkpoint ({type(error).__name__})"


# ----------------------------------------------------------------------------- hooks


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
        seed_all_rng(sample_seed(self.seed, self.trainer.iter, comm.get_rank()))


class _RecordHook(hooks.HookBase):
    """Keeps ``run.json``'s iteration current (main process)."""

    def __init__(self, record: RunRecord):
        self.record = record

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done % _RECORD_PERIOD == 0 or done == self.trainer.max_iter:
            self.record.update(iteration=done)


class TrackingWriter(EventWriter):
    """A detectron2 ``EventWriter`` that logs to an experiment tracker (:mod:`dcl.tracking`) what
    ``metrics.json``'s ``JSONWriter`` writes at the same moment, the iteration as the step.
    ``close`` leaves the tracker run open: ``dcl train`` ends it, saying how the run ended."""

    def __init__(self, tracker: "Tracker"):
        self.tracker = tracker
        self._last_write = -1

    def write(self) -> None:
        from dcl.tracking import latest_new_scalars

        new = latest_new_scalars(get_event_storage(), self._last_write)
        for iteration in sorted(new):  # W&B steps only go forward
            self.tracker.log_metrics(new[iteration], iteration)
        if new:
            self._last_write = max(new)


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


def prepare_output_dir(output_dir: Path) -> None:
    """Before a run starts in ``output_dir``: remove the temporaries a killed attempt left
    (checkpoints being written, the evaluator's staging directory), and cut a torn last line
    off ``metrics.json`` (detectron2 appends to it; a new line must not be glued to a fragment)."""
    if not output_dir.is_dir():
        return
    for path in remove_stale_temporaries(output_dir):
        logger.warning("removed %s, left by an interrupted write", path)
    metrics = output_dir / TRAINING_METRICS
    if metrics.is_file():
        with open(metrics, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())
                logger.warning(
                    "%s: removed a torn last line (%d bytes) left by a killed run",
                    metrics,
                    len(data) - data.rfind(b"\n") - 1,
                )


# ----------------------------------------------------------------------------- trainer


def _inference_dir(cfg: CfgNode, dataset_name: str, folder: str = INFERENCE_DIR) -> Path:
    base = Path(cfg.OUTPUT_DIR) / folder
    return base if len(cfg.DATASETS.TEST) <= 1 else base / dataset_name


def _eval_results_path(cfg: CfgNode, folder: str = INFERENCE_DIR) -> Path:
    return Path(cfg.OUTPUT_DIR) / folder / EVAL_RESULTS


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
    raise ExpectedResultsError(
        f"TEST.EXPECTED_RESULTS not met: expected {wanted}; got {got}"
        + (f" (no {', '.join(missing)} results; there are {', '.join(results)})" if missing else "")
    )


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with: COCO evaluation (official pycocotools code when
    detectron2 has no compiled extension), :class:`AtomicCheckpointer`, a stop-signal hook, a
    resumable data order, and ``run.json`` progress updates.

    ``stop`` is the process's :class:`dcl.training.preemption.StopSignal`; ``record`` the run record
    (main process only); ``keep_checkpoints`` the periodic checkpoints to keep
    (:class:`AtomicCheckpointer`, None: all); ``tracker`` an experiment tracker run
    (:mod:`dcl.tracking`, main process only) that gets what ``metrics.json`` gets."""

    def __init__(
        self,
        cfg: CfgNode,
        stop: StopSignal,
        record: Optional[RunRecord] = None,
        keep_checkpoints: Optional[int] = None,
        tracker: Optional["Tracker"] = None,
    ):
        self.stop = stop
        self._tracker = tracker
        self._record = record
        self._keep_checkpoints = keep_checkpoints
        self._train_sampler: Optional[ResumableTrainingSampler] = None
        self._loaders: list[LazyLoader] = []
        self.completed_iterations = 0
        super().__init__(cfg)

    # -- data
    def build_train_loader(self, cfg: CfgNode):
        """:func:`dcl.training.sampler.build_train_loader`; other samplers use detectron2's loader."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return super().build_train_loader(cfg)
        loader, sampler = build_train_loader(cfg)
        if self._train_sampler is None:  # the first loader is the trainer's (PreciseBN builds more)
            self._train_sampler = sampler
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
        coco = AtomicCOCOEvaluator(
            dataset_name,
            tasks=tasks,
            output_dir=output_folder or str(_inference_dir(cfg, dataset_name)),
            use_fast_impl=dcl.compat.has_extension(),
        )
        from dcl.training.cityscapes_evaluator import CityscapesAPEvaluator, is_cityscapes

        if cfg.MODEL.MASK_ON and is_cityscapes(dataset_name):
            # The paper's Cityscapes metric beside COCO AP, as the original train_net.py printed it.
            return DatasetEvaluators([coco, CityscapesAPEvaluator(dataset_name)])
        return coco

    def test(self, cfg: CfgNode, model, evaluators=None):
        """:meth:`evaluate` with this trainer's stop signal (detectron2's EvalHook calls it)."""
        return self.evaluate(cfg, model, self.stop, evaluators)

    @classmethod
    def evaluate(cls, cfg: CfgNode, model, stop: StopSignal, evaluators=None, folder: str = INFERENCE_DIR):
        """detectron2's ``DefaultTrainer.test`` on ``DATASETS.TEST``, writing
        ``<folder>/detectron2_eval.json``; skipped (returns {}) once ``stop`` was received,
        interruptible by it while it runs."""
        if agreed(stop.requested):
            logger.warning("evaluation skipped: %s received", stop.name)
            stop.skipped_evaluation = True
            return {}
        with stop.deferred(False):
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.DATASETS.TEST:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            atomic_write_json(_eval_results_path(cfg, folder), _plain(per_dataset))
        return results

    @classmethod
    def evaluate_with_tta(cls, cfg: CfgNode, model, stop: StopSignal):
        """``TEST.AUG.ENABLED``: the evaluation with detectron2's ``GeneralizedRCNNWithTTA``, as
        train_net.py's ``test_with_TTA`` runs it: evaluators writing to ``OUTPUT_DIR/inference_TTA``
        (with its ``detectron2_eval.json``), result keys suffixed ``_TTA``."""
        from detectron2.modeling import GeneralizedRCNNWithTTA

        logger.info("Running inference with test-time augmentation ...")
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=str(_inference_dir(cfg, name, TTA_FOLDER)))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.evaluate(cfg, GeneralizedRCNNWithTTA(cfg, model), stop, evaluators, TTA_FOLDER)
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
    def build_writers(self):
        """detectron2's writers (terminal, ``metrics.json``, TensorBoard), and the tracker's."""
        writers = super().build_writers()
        if self._tracker is not None:
            writers.append(TrackingWriter(self._tracker))
        return writers

    def build_hooks(self):
        self.checkpointer = AtomicCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.checkpointer.keep_periodic = self._keep_checkpoints
        built = super().build_hooks()
        # After the LR scheduler and the periodic checkpointer, before evaluation and writers:
        # a stop skips the evaluation due at this iteration, and the writers still flush.
        position = next((i for i, h in enumerate(built) if isinstance(h, hooks.EvalHook)), len(built))
        extra = [_DataOrderHook(self._train_sampler), StopHook(self.stop)]
        if self._record is not None:
            extra.append(_RecordHook(self._record))
        built = [_IterationSeedHook(self.cfg.SEED)] + built[:position] + extra + built[position:]
        if self.cfg.TEST.AUG.ENABLED:
            # train_net.py's TTA evaluation after the last iteration, here before the writers, so
            # its results reach metrics.json and TensorBoard too.
            tta = hooks.EvalHook(0, lambda: self.evaluate_with_tta(self.cfg, self.model, self.stop))
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


def copy_results(cfg: CfgNode, record_path: Path, results_dir: str, eval_only: bool) -> None:
    """Copy the small results of a finished run to ``results_dir`` (each file atomically)."""
    files = [
        (record_path, RUN_RECORD),
        (record_path.parent / "config.yaml", "config.yaml"),
        (_eval_results_path(cfg), EVAL_RESULTS),
    ]
    if not eval_only:
        files.append((Path(cfg.OUTPUT_DIR) / TRAINING_METRICS, TRAINING_METRICS))
    for source, name in files:
        if source.is_file():
            with atomic_path(Path(results_dir) / name) as tmp:
                shutil.copyfile(source, tmp)
