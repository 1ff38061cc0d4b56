"""The pipeline's vocabulary, one home for each list of names: datasets, initialisations, methods,
models (and the default backbone), run groups, segmentation-error kinds and IoU types.

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
    "DEFAULT_BACKBONE",
    "SCHEDULE_PATTERN",
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
# With the detector family, a model's identity (what a published number belongs to): the backbone
# and the training schedule as the model zoos name them ("R101-FPN", "3x"). An experiment or
# published entry that names no backbone has this one; one that names no schedule was trained by
# its config's own recipe (the Cityscapes ones have no "1x"/"3x" name).
DEFAULT_BACKBONE = "R50-FPN"
SCHEDULE_PATTERN = r"^[0-9]+x$"  # detectron2's schedule names: 1x = 90k iterations at batch 16
# How a run got into the experiment matrix: `experiments`, `released` or an ablation sweep.
GROUPS: tuple[str, ...] = ("main", "released", "ablation")
# Segmentation errors (docs/method.md, "The segmentation-error analysis"): foreground false positives, background false positives,
# false negatives; an analysis removes one kind or a combination ("fFP&bFP").
ERROR_KINDS: tuple[str, ...] = ("fFP", "bFP", "FN")
# pycocotools' iouType spellings: mask IoU and box IoU.
IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
