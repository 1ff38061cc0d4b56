"""What a workflow plan costs, before anything is submitted: GPU-hours and Slurm chunks of each
training, the checkpoint disk at the retention setting (``keep_checkpoints``), and the CPU steps'
time at the datasets' real sizes. ``dcl plan`` prints it per experiment and in total.

The figures are estimates from measurements, each with its source:

- training speed: the detectron2 model zoo's training times of the paper's models (V100;
  docs/method.md, "Published numbers"), as GPU-seconds per training image, times the schedule
  (``SOLVER.MAX_ITER`` x ``SOLVER.IMS_PER_BATCH``, read from the run's detectron2 config and
  overrides without importing detectron2);
- checkpoint sizes: ``benchmarks/bench_checkpoints.py`` (the real models, built on the CPU);
- CPU steps: ``benchmarks/bench_scale.py`` on synthetic inputs of the real sizes (2-core machine).

Standard library only: ``dcl plan`` and the Snakefile import it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from dcl.io import InputError, config_chain
from dcl.slurm import stop_signal_seconds

__all__ = [
    "CHECKPOINT_MB",
    "CPU_STEP_SECONDS",
    "GPU_SECONDS_PER_IMAGE",
    "RunCost",
    "Schedule",
    "cpu_step_seconds",
    "run_cost",
    "schedule",
]

# detectron2's defaults (detectron2/config/defaults.py) for a key no config file in the chain sets.
_SOLVER_DEFAULTS = {"MAX_ITER": 40000, "IMS_PER_BATCH": 16, "CHECKPOINT_PERIOD": 5000}

# Keyed by the dataset's format (dcl.layout.Dataset.format): a toy dataset is costed as if its
# images were full-size.
# GPU-seconds per training image. detectron2's model zoo (V100): Mask R-CNN R50-FPN COCO 1x
# 0.261 s/iter for 16 images on 8 GPUs; Cityscapes 0.240 s/iter for 8 images on 8 GPUs (1024x2048).
# RefineMask has no published training speed: taken as Mask R-CNN's (its head adds little to the
# backbone's time); replace with your own measurement (metrics.json's `time`).
GPU_SECONDS_PER_IMAGE: dict[str, dict[str, float]] = {
    "coco": {"mask_rcnn": 0.261 * 8 / 16, "refinemask": 0.261 * 8 / 16},
    "cityscapes": {"mask_rcnn": 0.240 * 8 / 8, "refinemask": 0.240 * 8 / 8},
}

# MB per checkpoint file (benchmarks/bench_checkpoints.py; 8- and 80-class heads differ by < 2 %):
# periodic = weights + SGD momentum (what a resume needs), final = weights only.
CHECKPOINT_MB: dict[str, dict[str, float]] = {
    "mask_rcnn": {"periodic": 353.5, "final": 177.5},
    "refinemask": {"periodic": 381.5, "final": 191.5},
}

# Wall seconds of each CPU job of one run at the dataset's real size (benchmarks/bench_scale.py on
# 2 cores, with the threads/workers profiles/default/config.yaml gives the step): COCO val 5,000
# images x 100 detections; Cityscapes val 500 images of 1024x2048 x 100 detections (its error
# analyses: measured by the issue that asked for this module, 17 s and 35 s).
CPU_STEP_SECONDS: dict[str, dict[str, float]] = {
    "coco": {"evaluate": 59.1, "errors": 156.8, "errors_legacy": 118.8},
    "cityscapes": {"evaluate": 103.4, "errors": 17.0, "errors_legacy": 35.0},
}


@dataclass(frozen=True)
class Schedule:
    """The solver keys that decide a training's length and its checkpoints."""

    max_iter: int
    ims_per_batch: int
    checkpoint_period: int


def _solver_keys(config_file: str) -> dict[str, Any]:
    """SOLVER keys of a detectron2 YAML config and its ``_BASE_`` chain (later files win)."""
    keys: dict[str, Any] = {}
    for data in reversed(config_chain(config_file)):
        solver = data.get("SOLVER")
        if isinstance(solver, dict):
            keys.update({k: v for k, v in solver.items() if k in _SOLVER_DEFAULTS})
    return keys


def schedule(config_file: str, overrides: Iterable[tuple[str, str]]) -> Schedule:
    """A run's schedule: ``config_file``'s chain, then the ``KEY VALUE`` overrides in order."""
    keys = {**_SOLVER_DEFAULTS, **_solver_keys(config_file)}
    for key, value in overrides:
        name = key.removeprefix("SOLVER.")
        if key.startswith("SOLVER.") and name in _SOLVER_DEFAULTS:
            keys[name] = value
    try:
        return Schedule(*(int(keys[name]) for name in ("MAX_ITER", "IMS_PER_BATCH", "CHECKPOINT_PERIOD")))
    except ValueError as error:
        raise InputError(f"{config_file}: a SOLVER value is not an integer ({error})") from None


@dataclass(frozen=True)
class RunCost:
    """One training's estimated cost: GPU-hours, Slurm chunks of ``runtime`` minutes, the
    checkpoint disk it keeps (GB, with ``keep`` and with every checkpoint kept)."""

    gpu_hours: float
    wall_hours: float
    chunks: int
    disk_gb: float
    disk_gb_keep_all: float


def run_cost(
    dataset_format: str, model: str, sched: Schedule, gpus: int, runtime_minutes: int, keep: int | None
) -> RunCost:
    """The cost of one training of ``sched`` on ``gpus`` GPUs (at least one) whose Slurm jobs
    last ``runtime_minutes``, each losing its last minutes to the pre-timeout checkpoint."""
    gpu_hours = sched.max_iter * sched.ims_per_batch * GPU_SECONDS_PER_IMAGE[dataset_format][model] / 3600
    wall_hours = gpu_hours / max(1, gpus)
    trained_minutes = max(1.0, runtime_minutes - stop_signal_seconds(runtime_minutes) / 60)
    chunks = max(1, math.ceil(wall_hours * 60 / trained_minutes))
    periodic = sched.max_iter // sched.checkpoint_period if sched.checkpoint_period > 0 else 0
    sizes = CHECKPOINT_MB[model]

    def disk(count: int) -> float:
        return (count * sizes["periodic"] + sizes["final"]) / 1000

    return RunCost(gpu_hours, wall_hours, chunks, disk(min(periodic, keep or periodic)), disk(periodic))


def cpu_step_seconds(dataset_format: str, occlusion: bool) -> float:
    """CPU seconds of one run's evaluation and error analyses (twice with the occlusion subset:
    an upper bound, the subset being smaller than val)."""
    return sum(CPU_STEP_SECONDS[dataset_format].values()) * (2 if occlusion else 1)
