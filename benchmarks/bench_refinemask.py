"""Training-step cost of RefineMask against Mask R-CNN, and of DCL on top of RefineMask.

    .venv/bin/python benchmarks/bench_refinemask.py [--steps 20]

The toy Cityscapes recipes (``configs/toy_cityscapes_mask_rcnn_R18_FPN.yaml`` and
``configs/toy_cityscapes_refinemask_R18_FPN.yaml``, with ``RefineMaskContrastHead`` for DCL): one
training step (forward, backward, SGD update) of each model on identical batches, the models
interleaved in rotating order so that load from other processes hits all alike; medians. Prints
the ratios RefineMask / Mask R-CNN and RefineMask + DCL / RefineMask. Uses the toy datasets at
``$DCL_TOY_DATASETS`` (else ``<$DETECTRON2_DATASETS or datasets>/toy``), generating them in a
temporary directory when absent. Exits 0 (a benchmark, not a test).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (config file, overrides)
    "Mask R-CNN": ("toy_cityscapes_mask_rcnn_R18_FPN.yaml", []),
    "RefineMask": ("toy_cityscapes_refinemask_R18_FPN.yaml", []),
    "RefineMask + DCL": ("toy_cityscapes_refinemask_R18_FPN.yaml", ["MODEL.ROI_MASK_HEAD.NAME", "RefineMaskContrastHead"]),
}


def bench(steps: int) -> None:
    import dcl.compat  # noqa: F401
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from dcl.datasets import register_datasets, toy_root
    from dcl.config import load_config

    temporary = None
    if not (toy_root() / "cityscapes" / "annotations").is_dir():
        from dcl.toydata import generate_toy_datasets

        temporary = tempfile.TemporaryDirectory(prefix="dcl-bench-toy-")
        generate_toy_datasets(temporary.name)
        os.environ["DCL_TOY_DATASETS"] = temporary.name
    register_datasets()
    configs = {name: load_config(str(REPO / "configs" / file), opts) for name, (file, opts) in MODELS.items()}
    models, optimizers = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg)
        optimizers[name] = build_optimizer(cfg, models[name])
    models["RefineMask + DCL"].load_state_dict(models["RefineMask"].state_dict(), strict=False)

    cfg = configs["Mask R-CNN"]
    mapper = DatasetMapper(cfg, True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    batch_size = cfg.SOLVER.IMS_PER_BATCH
    batches = [[mapper(dicts[(i * batch_size + j) % len(dicts)]) for j in range(batch_size)] for i in range(steps + 2)]

    names = list(models)
    times = {name: [] for name in names}
    with EventStorage():
        for i, batch in enumerate(batches):
            for name in names[i % 3:] + names[:i % 3]:
                model, optimizer = models[name], optimizers[name]
                model.train()
                start = time.perf_counter()
                losses = model(batch)
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
                if i >= 2:  # the first steps warm up allocators and caches
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"toy Cityscapes training step (batch {batch_size}), median of {steps}, {torch.get_num_threads()} thread(s):")
    for name in names:
        print(f"  {name:18s} {median[name] * 1e3:8.1f} ms")
    print(f"  RefineMask / Mask R-CNN        {median['RefineMask'] / median['Mask R-CNN']:.2f}x")
    print(f"  RefineMask + DCL / RefineMask  {median['RefineMask + DCL'] / median['RefineMask']:.2f}x")
    if temporary is not None:
        temporary.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    bench(parser.parse_args().steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
