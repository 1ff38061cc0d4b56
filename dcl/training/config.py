"""The detectron2 config of ``dcl train``: detectron2's defaults, the DCL and RefineMask keys,
a YAML file and ``KEY VALUE`` overrides (:func:`load_config`), and its checks against this
machine (devices, registered datasets, local weights) before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog

from dcl.data import weights as dcl_weights
from dcl.io import SEED_LIMIT, InputError, config_chain
from dcl.model.heads import add_dcl_config, check_dcl_config, is_dcl_model_config
from dcl.model.refinemask import add_refinemask_config
from dcl.slurm import DistributedLayout

__all__ = [
    "add_config_hook",
    "check_datasets",
    "check_devices",
    "dry_run_summary",
    "load_config",
    "refuse_unsafe_yaml",
    "resolve_weights",
    "with_values",
]


# `add_config(cfg)` functions of the modules `dcl train --import` loaded (dcl.training.methods): each adds its
# module's keys to the defaults, as add_dcl_config does DCL's.
_CONFIG_HOOKS: list = []


def add_config_hook(hook) -> None:
    """Have :func:`load_config` call ``hook(cfg)`` on the defaults (once per function)."""
    if hook not in _CONFIG_HOOKS:
        _CONFIG_HOOKS.append(hook)


def load_config(config_file: str, opts: list[str]) -> CfgNode:
    """detectron2's default config + the DCL keys, merged with ``config_file`` and ``opts``.

    Raises:
        InputError: missing file, unknown key, malformed value or bad DCL setting, naming the
            file or override at fault.
    """
    cfg = get_cfg()
    add_dcl_config(cfg)
    add_refinemask_config(cfg)
    for hook in _CONFIG_HOOKS:
        hook(cfg)
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
    config_chain(config_file)


def _describe(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"{text} ({type(error).__name__})" if text else type(error).__name__


def with_values(cfg: CfgNode, **values: object) -> CfgNode:
    """A frozen copy of ``cfg`` with the top-level keys ``values`` (e.g. ``SEED``) replaced."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.update(values)
    cfg.freeze()
    return cfg


def check_devices(cfg: CfgNode, num_gpus: int, num_machines: int, machines_per_node: int = 1) -> None:
    """Raises InputError unless ``cfg`` can run in ``num_gpus`` workers on each of ``num_machines``
    (``machines_per_node`` of them sharing a node: Slurm tasks that need GPUs of their own)."""
    if cfg.SEED + num_gpus * num_machines > SEED_LIMIT:  # detectron2 seeds rank r with SEED + r
        raise InputError(
            f"SEED {cfg.SEED} + one per worker ({num_gpus * num_machines}) is out of numpy's seed range (below 2^32)"
        )
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise InputError(
                "MODEL.DEVICE is cuda but no CUDA GPU is visible here; add `MODEL.DEVICE cpu` to run on the CPU"
            )
        if num_gpus > available:
            raise InputError(f"--num-gpus {num_gpus} but this machine has {available} visible GPU(s)")
        # Each worker takes GPU <local rank>: tasks that see all of the node's GPUs would share them.
        if machines_per_node > 1 and available != num_gpus:
            raise InputError(
                f"{machines_per_node} dcl train tasks on this node, each seeing {available} GPU(s) for "
                f"--num-gpus {num_gpus}: give each task its own (srun --gpus-per-task={num_gpus})"
            )
    elif device != "cpu" and num_gpus * num_machines != 1:
        raise InputError(
            f"MODEL.DEVICE {device} runs in one process: use --num-gpus 1 on one machine "
            "(several workers need CUDA GPUs, or the CPU: MODEL.DEVICE cpu)"
        )


def check_solver(cfg: CfgNode, num_gpus: int, num_machines: int, eval_only: bool) -> None:
    """Raises InputError (naming the key) unless the schedule, batch and loader settings can run
    in ``num_gpus`` workers on each of ``num_machines``: checked before anything is built, also
    by ``--dry-run`` (a zero batch would otherwise loop forever in the sampler)."""
    if num_gpus < 1:
        raise InputError(f"--num-gpus must be at least 1, got {num_gpus}")
    world = num_gpus * num_machines
    solver = cfg.SOLVER
    problems = []
    if cfg.DATALOADER.NUM_WORKERS < 0:
        problems.append(f"DATALOADER.NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS} must be 0 or more")
    if not eval_only:
        if solver.IMS_PER_BATCH < world or solver.IMS_PER_BATCH % world:
            problems.append(
                f"SOLVER.IMS_PER_BATCH {solver.IMS_PER_BATCH} must be a positive multiple of the "
                f"{world} worker(s) (--num-gpus x machines): each takes IMS_PER_BATCH / workers images"
            )
        if solver.MAX_ITER < 1:
            problems.append(f"SOLVER.MAX_ITER {solver.MAX_ITER} must be at least 1")
        # detectron2 ignores steps past MAX_ITER (a shortened schedule keeps its steps), but its
        # scheduler fails on a step at MAX_ITER, and on steps out of order.
        steps = list(solver.STEPS)
        if steps != sorted(set(steps)) or any(step <= 0 or step == solver.MAX_ITER for step in steps):
            problems.append(
                f"SOLVER.STEPS {tuple(steps)} must be positive, increase strictly and not equal "
                f"SOLVER.MAX_ITER {solver.MAX_ITER}"
            )
        if solver.CHECKPOINT_PERIOD < 1:
            problems.append(f"SOLVER.CHECKPOINT_PERIOD {solver.CHECKPOINT_PERIOD} must be at least 1")
        if solver.WARMUP_ITERS < 0 or solver.BASE_LR <= 0:
            problems.append(
                f"SOLVER.WARMUP_ITERS {solver.WARMUP_ITERS} must be 0 or more and SOLVER.BASE_LR {solver.BASE_LR} positive"
            )
    if cfg.TEST.EVAL_PERIOD < 0:
        problems.append(f"TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD} must be 0 (at the end only) or more")
    if problems:
        raise InputError("; ".join(problems))


def check_datasets(cfg: CfgNode, eval_only: bool) -> None:
    """Raises InputError unless the datasets the run reads are registered."""
    known = set(DatasetCatalog.list())
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InputError(f"unknown dataset(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise InputError("DATASETS.TRAIN is empty: nothing to train on")


def resolve_weights(cfg: CfgNode, resume: bool, weights_dir: Optional[str]) -> Optional[str]:
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


def dry_run_summary(
    cfg: CfgNode, *, config_file: str, eval_only: bool, num_gpus: int, distributed: DistributedLayout, weights: dict
) -> dict:
    """What ``dcl train --dry-run`` prints: the model ``cfg`` builds (on the CPU, with its
    weights loaded), its datasets, solver, devices and weights."""
    from detectron2.modeling import build_model

    from dcl.training.engine import AtomicCheckpointer

    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    model = build_model(cpu_cfg)
    if weights["resolved"] and Path(weights["resolved"]).is_file():
        # As a real start loads them: refused if not plain data, unreadable or not a checkpoint.
        AtomicCheckpointer(model).load(weights["resolved"], checkpointables=[])
    roi_heads = getattr(model, "roi_heads", None)
    mask_head = getattr(roi_heads, "mask_head", None)
    return {
        "config_file": config_file,
        "mode": "eval-only" if eval_only else "train",
        "meta_architecture": type(model).__name__,
        "roi_heads": type(roi_heads).__name__ if roi_heads is not None else None,
        "mask_head": type(mask_head).__name__ if mask_head is not None else None,
        "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        "dcl": dict(cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS) if is_dcl_model_config(cfg) else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        "solver": {
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            "base_lr": cfg.SOLVER.BASE_LR,
            "max_iter": cfg.SOLVER.MAX_ITER,
            "steps": list(cfg.SOLVER.STEPS),
        },
        "device": cfg.MODEL.DEVICE,
        "num_gpus_per_machine": num_gpus,
        "distributed": dataclasses.asdict(distributed),
        "weights": weights,
        "output_dir": cfg.OUTPUT_DIR,
    }
