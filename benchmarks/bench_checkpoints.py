"""Measure the checkpoint sizes of the paper's models: what ``dcl plan`` counts on for the disk.

    .venv/bin/python benchmarks/bench_checkpoints.py [--check]

For each model of the paper's matrix (Mask R-CNN R50-FPN on COCO and on Cityscapes, with and
without DCL; RefineMask on Cityscapes) builds the model on the CPU from its detectron2 config,
gives SGD its momentum buffers (what a trained checkpoint holds) and writes, in memory, the two
checkpoints ``dcl train`` saves: a periodic one (weights + optimizer state) and ``model_final.pth``
(weights only). Prints each size in MB beside the figure :data:`dcl.workflow.cost.CHECKPOINT_MB` holds and
their ratio; ``--check`` exits 1 when one is off by more than 2 %.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dcl.compat  # noqa: E402,F401  (before detectron2)
import torch  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402

from dcl.training.config import load_config  # noqa: E402
from dcl.workflow.cost import CHECKPOINT_MB  # noqa: E402
from dcl.training.engine import Trainer  # noqa: E402
from dcl.workflow.experiments import MODEL_HEADS  # noqa: E402

# (dataset, model) -> the detectron2 config of the paper's recipe.
CONFIGS = {
    ("coco", "mask_rcnn"): "configs/coco_mask_rcnn_R_50_FPN_1x.yaml",
    ("cityscapes", "mask_rcnn"): "configs/cityscapes_mask_rcnn_R_50_FPN.yaml",
    ("cityscapes", "refinemask"): "configs/cityscapes_refinemask_R_50_FPN.yaml",
}
MB = 1e6


def _size(data: dict) -> float:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.tell() / MB


def measure(config_file: str, heads: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """Sizes (MB) of a periodic checkpoint (with SGD momentum) and of the final weights."""
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + [word for pair in heads for word in pair]
    cfg = load_config(str(REPO / config_file), opts)
    model = Trainer.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    weights = model.state_dict()
    final = _size({"model": weights, "trainer": {"iteration": 0}, "iteration": 0})
    periodic = _size({"model": weights, "trainer": {"iteration": 0, "_trainer": {"optimizer": optimizer.state_dict()}}})
    return {"periodic": periodic, "final": final}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a size is off by more than 2 %%")
    args = parser.parse_args()
    off = False
    print(
        f"{'dataset':11s} {'model':11s} {'method':9s} {'kind':9s} {'measured MB':>12s} {'dcl.workflow.cost MB':>12s} ratio"
    )
    for (dataset, model), config_file in CONFIGS.items():
        for method, heads in MODEL_HEADS[model].items():
            sizes = measure(config_file, heads)
            for kind, size in sizes.items():
                declared = CHECKPOINT_MB[model][kind]
                ratio = size / declared
                off |= abs(ratio - 1) > 0.02
                print(f"{dataset:11s} {model:11s} {method:9s} {kind:9s} {size:12.1f} {declared:12.1f} {ratio:.3f}")
    return 1 if args.check and off else 0


if __name__ == "__main__":
    sys.exit(main())
