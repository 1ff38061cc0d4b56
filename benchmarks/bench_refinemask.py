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
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (config file, overrides)
    "Mask R-CNN": ("toy_cityscapes_mask_rcnn_R18_FPN.yaml", []),
    "RefineMask": ("toy_cityscapes_refinemask_R18_FPN.yaml", []),
    "RefineMask + DCL": (
        "toy_cityscapes_refinemask_R18_FPN.yaml",
        ["MODEL.ROI_MASK_HEAD.NAME", "RefineMaskContrastHead"],
    ),
}


def bench(steps: int) -> None:
    import dcl.compat  # noqa: F401
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    from dcl.training.config import load_config
    from toy_steps import median_step_seconds, toy_batches, toy_datasets

    configs = {name: load_config(str(REPO / "configs" / file), opts) for name, (file, opts) in MODELS.items()}
    models, optimizers = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg)
        optimizers[name] = build_optimizer(cfg, models[name])
    models["RefineMask + DCL"].load_state_dict(models["RefineMask"].state_dict(), strict=False)
    cfg = configs["Mask R-CNN"]
    with toy_datasets():
        median = median_step_seconds(models, optimizers, toy_batches(cfg, steps + 2))
    print(
        f"toy Cityscapes training step (batch {cfg.SOLVER.IMS_PER_BATCH}), median of {steps}, "
        f"{torch.get_num_threads()} thread(s):"
    )
    for name in models:
        print(f"  {name:18s} {median[name] * 1e3:8.1f} ms")
    print(f"  RefineMask / Mask R-CNN        {median['RefineMask'] / median['Mask R-CNN']:.2f}x")
    print(f"  RefineMask + DCL / RefineMask  {median['RefineMask + DCL'] / median['RefineMask']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    bench(parser.parse_args().steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
