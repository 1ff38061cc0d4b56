"""The toy-training settings every test module that trains shares: the toy detectron2 configs, the
DCL heads' override, a `dcl train` command line, and the workflow's shortened schedule."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOY_COCO = str(CONFIGS / "toy_coco_mask_rcnn_R18_FPN.yaml")
TOY_CITYSCAPES = str(CONFIGS / "toy_cityscapes_mask_rcnn_R18_FPN.yaml")
TOY_REFINEMASK = str(CONFIGS / "toy_cityscapes_refinemask_R18_FPN.yaml")
# What `method: dcl` adds to a Mask R-CNN config (the original README's command lines).
DCL_HEADS = ["MODEL.ROI_HEADS.NAME", "ContrastRoIHeads", "MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"]
# `snakemake --config` for a toy DAG in minutes: 20 iterations, a checkpoint halfway.
TOY_WORKFLOW_OVERRIDES = "train_overrides={SOLVER.MAX_ITER: 20, SOLVER.CHECKPOINT_PERIOD: 10}"


def dcl_train(out: Path | str, *overrides: str, config: str = TOY_COCO) -> list[str]:
    """``python -m dcl train --config-file CONFIG OVERRIDES... OUTPUT_DIR out``, as a subprocess's argv."""
    return [sys.executable, "-m", "dcl", "train", "--config-file", str(config), *overrides, "OUTPUT_DIR", str(out)]
