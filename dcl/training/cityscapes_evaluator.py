"""The official Cityscapes instance-level AP as a detectron2 evaluator, for ``dcl train``.

The original ``train_net.py`` scored Cityscapes val with detectron2's
``CityscapesInstanceEvaluator``: the AP and AP50 the paper reports, printed during training and
in the periodic evaluations. :class:`CityscapesAPEvaluator` gives ``dcl train`` the same numbers
beside COCO AP, computed as ``dcl evaluate --cityscapes-root`` computes them
(:func:`dcl.data.cityscapes.cityscapes_instance_ap`: cityscapesscripts' own evaluation, with its numpy
workarounds), so training-time and workflow numbers agree exactly. Its result is
``{"cityscapes": {"AP": ..., "AP50": ...}}`` (percent): detectron2 logs it, writes it to
``metrics.json`` / TensorBoard as ``cityscapes/AP`` and ``cityscapes/AP50``, and ``dcl train``
to ``inference/detectron2_eval.json``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm

__all__ = ["CityscapesAPEvaluator", "is_cityscapes"]

logger = logging.getLogger(__name__)


def is_cityscapes(dataset_name: str) -> bool:
    """A COCO-JSON Cityscapes val set (dcl.data.datasets registers it with ``gt_dir``)."""
    metadata = MetadataCatalog.get(dataset_name)
    return metadata.get("evaluator_type") == "coco" and metadata.get("gt_dir") is not None


class CityscapesAPEvaluator(DatasetEvaluator):
    """Collects COCO-format detections (as ``COCOEvaluator`` does) and scores them with
    cityscapesscripts against ``<root>/gtFine/<split>`` on the main process.

    Works on every rank (it gathers to the main process); other ranks return {}.
    """

    def __init__(self, dataset_name: str):
        metadata = MetadataCatalog.get(dataset_name)
        self._gt_json = metadata.json_file
        gt_dir = Path(metadata.gt_dir)
        self._root, self._split = gt_dir.parent.parent, gt_dir.name
        # detectron2's contiguous class index -> the GT file's category id
        self._category_of_class = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
        self._predictions: list[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs, outputs) -> None:
        for input_, output in zip(inputs, outputs):
            if "instances" in output:
                instances = output["instances"].to("cpu")
                self._predictions += instances_to_coco_json(instances, input_["image_id"])

    def evaluate(self) -> dict:
        from dcl.data.cityscapes import cityscapes_instance_ap
        from dcl.data.coco import load_ground_truth, load_predictions

        predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        records = [
            dict(p, category_id=self._category_of_class[p["category_id"]]) for p in itertools.chain(*predictions)
        ]
        gt = load_ground_truth(self._gt_json)
        result = cityscapes_instance_ap(gt, load_predictions(records, gt), self._root, self._split)
        logger.info(
            "Cityscapes instance-level AP (cityscapesscripts): AP %.2f  AP50 %.2f",
            result["AP"] or 0.0,
            result["AP50"] or 0.0,
        )
        return {"cityscapes": {"AP": result["AP"], "AP50": result["AP50"]}}
