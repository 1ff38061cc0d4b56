"""Where the pipeline's files live: one home for every path pattern.

Datasets, under the datasets root (``$DETECTRON2_DATASETS``; docs/design.md, "Dataset names and
layout"): each dataset's folder, images, annotation files, detectron2 catalog names and the ground
truth its runs are scored on. Runs: their folder under ``results/{preset}``, detectron2's
OUTPUT_DIR under ``work/{preset}``, the files each step writes there, and the step logs.

``dcl data`` (checks, conversion, the toy generator), the detectron2 registration, ``dcl plan``,
the Snakemake rules and the report all build their paths from here. Plain data and string
patterns, no third-party imports: the Snakefile reads this on a login node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "is_import_path",
    "SPLITS",
    "TOY_DIR",
    "COCO_OCCLUSION_SUBSET",
    "TOY_OCCLUSION_SUBSET",
    "coco_images",
    "coco_annotations",
    "cityscapes_images",
    "cityscapes_gt",
    "cityscapes_coco_json",
    "Dataset",
    "DATASET_SPECS",
    "REGISTERED_NAMES",
    "EXPERIMENTS",
    "RUN_DIR",
    "OUTPUT_DIR",
    "INFERENCE_DIR",
    "PREDICTIONS",
    "RUN_RECORD",
    "TRAINING_METRICS",
    "EVALUATION",
    "ERROR_ANALYSES",
    "CORRECTED_ERRORS",
    "LEGACY_ERRORS",
    "on_occlusion",
    "split_occlusion",
    "CHECK_STAMP",
    "run_files",
    "LOGS",
    "LOG",
]

SPLITS = ("train", "val")
TOY_DIR = "toy"  # the toy datasets' folder under the datasets root (or $DCL_TOY_DATASETS)
# COCO-OCC (the occluded val images), where the user puts it, relative to the datasets root.
COCO_OCCLUSION_SUBSET = "coco/instances_occ2017_new.json"
# Its toy counterpart, within the toy COCO folder: `dcl data toy` writes it.
TOY_OCCLUSION_SUBSET = "annotations/instances_occ_val.json"


# ----------------------------------------------------------------------------- dataset folders
# Paths within a dataset's folder. COCO 2017 names its splits train2017/val2017; the toy COCO has
# no year.
def coco_images(split: str, year: str = "") -> str:
    return f"{split}{year}"


def coco_annotations(split: str, year: str = "") -> str:
    return f"annotations/instances_{split}{year}.json"


def cityscapes_images(split: str) -> str:
    return f"leftImg8bit/{split}"


def cityscapes_gt(split: str) -> str:
    return f"gtFine/{split}"


def cityscapes_coco_json(split: str, style: str = "default") -> str:
    """The COCO JSON of a Cityscapes split (``dcl data cityscapes-to-coco``); ``style="detectron"``:
    Detectron's conversion, the original error analysis' GT."""
    suffix = ".detectron" if style == "detectron" else ""
    return f"annotations/instancesonly_filtered_gtFine_{split}{suffix}.json"


@dataclass(frozen=True)
class Dataset:
    """A dataset the workflow trains and evaluates on.

    ``folder`` is relative to the datasets root, or for a toy dataset to the toy root
    (``$DCL_TOY_DATASETS``, by default ``<datasets root>/toy``). ``metric`` is the headline number
    of its runs; ``occlusion``: also scored on the occlusion subset (COCO-OCC).
    """

    name: str
    format: str  # coco | cityscapes
    folder: str
    toy: bool
    metric: str
    catalog_prefix: str  # detectron2 catalog name without the split
    year: str = ""
    occlusion: bool = False

    def catalog_name(self, split: str) -> str:
        return f"{self.catalog_prefix}_{split}"

    @property
    def root_folder(self) -> str:
        """``folder`` relative to the datasets root, with the toy root at ``<datasets root>/toy``
        (where the workflow pins ``$DCL_TOY_DATASETS``: ``Plan.environment``)."""
        return f"{TOY_DIR}/{self.folder}" if self.toy else self.folder

    def images(self, split: str) -> str:
        if self.format == "coco":
            return coco_images(split, self.year)
        return cityscapes_images(split)

    def annotations(self, split: str, style: str = "default") -> str:
        """The COCO JSON of a split, within ``folder``; for Cityscapes the converted one."""
        if self.format == "coco":
            return coco_annotations(split, self.year)
        return cityscapes_coco_json(split, style)

    @property
    def gt(self) -> str:
        """The validation ground truth (COCO JSON) relative to the datasets root."""
        return f"{self.root_folder}/{self.annotations('val')}"

    @property
    def legacy_gt(self) -> str | None:
        """The GT file the original error-analysis tool used, where it differs from ``gt``
        (Cityscapes: Detectron's conversion), relative to the datasets root."""
        if self.format != "cityscapes":
            return None
        return f"{self.root_folder}/{self.annotations('val', 'detectron')}"

    @property
    def cityscapes_root(self) -> str | None:
        """The Cityscapes folder (gtFine/, leftImg8bit/) relative to the datasets root."""
        return self.root_folder if self.format == "cityscapes" else None


# In dcl.names.DATASETS order (a test checks the names agree).
DATASET_SPECS: dict[str, Dataset] = {
    "cityscapes": Dataset(
        "cityscapes", "cityscapes", "cityscapes", False, "cityscapes.AP", "cityscapes_fine_instance_seg"
    ),
    "coco": Dataset("coco", "coco", "coco", False, "segm.AP", "coco_2017", year="2017", occlusion=True),
    "toy_cityscapes": Dataset("toy_cityscapes", "cityscapes", "cityscapes", True, "cityscapes.AP", "toy_cityscapes"),
    "toy_coco": Dataset("toy_coco", "coco", "coco", True, "segm.AP", "toy_coco", occlusion=True),
}
# The names dcl registers in detectron2's catalogs (the configs' DATASETS.TRAIN / TEST).
REGISTERED_NAMES = tuple(dataset.catalog_name(split) for dataset in DATASET_SPECS.values() for split in SPLITS)


# ----------------------------------------------------------------------------- run folders
# Within work/{preset}: a dataset's check (dcl data check), which every job of the dataset waits for.
CHECK_STAMP = "data/{dataset}.check.json"
# Within results/{preset}: the list of runs the report expects (dcl plan).
EXPERIMENTS = "experiments.json"
# Patterns with {experiment} and {seed}: a run's results folder (relative to results/{preset}) and
# its detectron2 OUTPUT_DIR (checkpoints, predictions; relative to work/{preset}).
RUN_DIR = "runs/{experiment}/seed{seed}"
OUTPUT_DIR = "{experiment}/seed{seed}"
# Within OUTPUT_DIR: train_net.py's evaluation folder, and in it the predictions detectron2's
# COCOEvaluator writes (COCO result JSON).
INFERENCE_DIR = "inference"
PREDICTIONS = f"{INFERENCE_DIR}/coco_instances_results.json"
RUN_RECORD = "run.json"
TRAINING_METRICS = "metrics.json"
# The lock a live `dcl train` holds on its OUTPUT_DIR (one writer per run folder).
RUN_LOCK = "dcl-train.lock"
# The analyses of a run's predictions, each written to {name}.json in the run folder: the
# evaluation (dcl evaluate), the corrected and the original tool's error analysis (dcl errors,
# default and --legacy-unmatched). On the occlusion subset: {name}_occ.json.
EVALUATION = "eval"
CORRECTED_ERRORS, LEGACY_ERRORS = ERROR_ANALYSES = ("errors", "errors_legacy")
_ON_OCCLUSION = "_occ"
# The workflow's logs (relative to the working directory), and a run step's log within them:
# {step} is train, inference, evaluate, errors, ...
LOGS = "logs/{preset}"
LOG = "{step}/{experiment}/seed{seed}.log"


def on_occlusion(analysis: str) -> str:
    """An analysis' name on the occlusion subset (``errors`` -> ``errors_occ``)."""
    return analysis + _ON_OCCLUSION


def split_occlusion(analysis: str) -> tuple[str, bool]:
    """``errors_occ`` -> ``("errors", True)``, ``errors`` -> ``("errors", False)``."""
    if analysis.endswith(_ON_OCCLUSION):
        return analysis[: -len(_ON_OCCLUSION)], True
    return analysis, False


def run_files(kind: str, occlusion: bool) -> list[str]:
    """The files a complete run folder holds: ``kind`` train or released; ``occlusion``: the run is
    also scored on the occlusion subset."""
    analyses = [EVALUATION, *ERROR_ANALYSES]
    if occlusion:
        analyses += [on_occlusion(name) for name in analyses]
    names = [RUN_RECORD, *(f"{name}.json" for name in analyses)]
    if kind == "train":
        names.append(TRAINING_METRICS)
    return names


def is_import_path(value: str) -> bool:
    """An entry of a method's ``imports`` that names a file (``examples/x.py``), not a module
    (the workflow checks the file exists; ``dcl train --import`` imports it from there)."""
    return value.endswith(".py") or "/" in value or os.sep in value
