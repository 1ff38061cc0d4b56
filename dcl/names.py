"""The pipeline's vocabulary, one home for each list of names: datasets, initialisations, methods,
models, run groups, segmentation-error kinds and IoU types.

Each mapping's key order is the paper's order (tables, figures and listings sort by it) and its
values are the display labels. Plain data, no imports: the Snakefile, ``dcl plan``, the
evaluation and the report all read these. The workflow schema
(``workflow/schemas/config.schema.yaml``) lists the same names as enums; a test checks they agree.
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "INITS",
    "METHODS",
    "MODELS",
    "GROUPS",
    "ERROR_KINDS",
    "IOU_TYPES",
]

DATASETS: dict[str, str] = {
    "cityscapes": "Cityscapes",
    "coco": "COCO",
    "toy_cityscapes": "Toy Cityscapes",
    "toy_coco": "Toy COCO",
}
INITS: dict[str, str] = {"imagenet": "ImageNet", "coco": "COCO", "scratch": "scratch"}
METHODS: dict[str, str] = {"baseline": "Baseline", "dcl": "DCL"}
MODELS: dict[str, str] = {"mask_rcnn": "Mask R-CNN", "refinemask": "RefineMask"}
# How a run got into the experiment matrix: `experiments`, `released` or an ablation sweep.
GROUPS: tuple[str, ...] = ("main", "released", "ablation")
# Segmentation errors (docs/method.md, "The segmentation-error analysis"): foreground false positives, background false positives,
# false negatives; an analysis removes one kind or a combination ("fFP&bFP").
ERROR_KINDS: tuple[str, ...] = ("fFP", "bFP", "FN")
# pycocotools' iouType spellings: mask IoU and box IoU.
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
