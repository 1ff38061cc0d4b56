"""``dcl evaluate``: COCO mask and box AP of a COCO results file, and the official Cityscapes AP.

Two interchangeable COCO backends give identical numbers (tests/evaluation/test_evaluate.py checks it):
``pycocotools`` (the reference implementation) and ``faster-coco-eval`` (the same algorithm in
C++, the default). Mask AP is computed with the results' ``bbox`` field dropped, as detectron2's
COCOEvaluator does, so pycocotools takes each detection's area from its mask (the ``bbox`` field
would otherwise make it use the box area for the small/medium/large ranges).

With ``--cityscapes-root`` the official Cityscapes instance-level AP and AP50 (what the paper
reports for Cityscapes) are added, computed by cityscapesscripts itself (``dcl.data.cityscapes``).

All numbers are percentages; a statistic COCO reports as -1 (no GT in that size range) is
``None`` (``null`` in eval.json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dcl.argtypes import at_least
from dcl.data.coco import (
    STAT_NAMES,
    GroundTruth,
    add_input_arguments,
    inputs_on_subset,
    load_ground_truth,
    load_predictions,
)
from dcl.io import InputError, atomic_write_json, refuse_output_over_input
from dcl.names import IOU_TYPES

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "IOU_TYPES",
    "check_backend",
    "CocoEvaluator",
    "results_for",
    "evaluate",
    "format_stats_table",
    "add_arguments",
    "run",
]

BACKENDS = ("faster-coco-eval", "pycocotools")
DEFAULT_BACKEND = "faster-coco-eval"

EMPTY_PREDICTIONS_WARNING = "the predictions file has no detections: every AP and AR is 0"
EMPTY_GT_WARNING = "the GT file has no annotations: AP and AR are undefined (null)"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(workers: int) -> int:
    """A worker-process option (``-j``): 0 = one per usable CPU; never more than those, which
    would only cost."""
    if workers < 0:
        raise InputError(f"workers must be >= 0 (0 = one per CPU), got {workers}")
    return min(workers, usable_cpus()) if workers else usable_cpus()


def check_backend(backend: str) -> None:
    """Raise InputError unless ``backend`` is one of ``BACKENDS`` (a user's option)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def results_for(predictions: Sequence[Mapping], iou_type: str) -> list[dict]:
    """Fresh COCO result records for one IoU type (the backends modify the records they load).

    ``segm`` keeps the mask and drops ``bbox`` (so areas are mask areas); ``bbox`` keeps the box
    and drops the mask (the box path of ``loadRes`` ignores it anyway).
    """
    if iou_type == "segm":
        return [
            {
                "image_id": p["image_id"],
                "category_id": p["category_id"],
                "score": p["score"],
                "segmentation": {"size": list(p["segmentation"]["size"]), "counts": p["segmentation"]["counts"]},
            }
            for p in predictions
        ]
    if iou_type == "bbox":
        return [
            {"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"], "bbox": list(p["bbox"])}
            for p in predictions
        ]
    raise ValueError(f"unknown IoU type {iou_type!r}; expected one of {IOU_TYPES}")


def _percent(stats: Sequence[float]) -> dict[str, float | None]:
    return {
        name: (None if float(value) == -1 else 100.0 * float(value))
        for name, value in zip(STAT_NAMES, stats[: len(STAT_NAMES)])
    }


def _gt_for_backend(gt: GroundTruth) -> dict:
    """A private copy of the GT (both backends write into annotations), with ``iscrowd`` defaulted
    (pycocotools needs the key; COCO's own files always have it)."""
    data = copy.deepcopy(dict(gt.data))
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
    return data


class CocoEvaluator:
    """COCO AP of any number of result sets against one GT; the GT is indexed once.

    Args:
        gt: validated ground truth (``dcl.data.coco.load_ground_truth``).
        iou_type: ``"segm"`` or ``"bbox"``.
        backend: ``"faster-coco-eval"`` or ``"pycocotools"``.
        threads: threads faster-coco-eval may use for mask IoU (pycocotools uses one).
    """

    def __init__(self, gt: GroundTruth, iou_type: str = "segm", backend: str = DEFAULT_BACKEND, threads: int = 1):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {iou_type!r}; expected one of {IOU_TYPES}")
        self.iou_type = iou_type
        self.backend = backend
        self.threads = max(1, int(threads))
        data = _gt_for_backend(gt)
        if backend == "pycocotools":
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self._gt = COCO()
                self._gt.dataset = data
                self._gt.createIndex()
        else:
            from faster_coco_eval import COCO

            self._gt = COCO(data, print_function=_quiet)

    def __call__(self, predictions: Sequence[Mapping]) -> dict[str, float | None]:
        """The 12 COCO statistics (percent, ``None`` for -1) of ``predictions`` (validated
        records as returned by ``dcl.data.coco.load_predictions``; not modified)."""
        results = results_for(predictions, self.iou_type)
        if self.backend == "pycocotools":
            return self._pycocotools(results)
        return self._faster_coco_eval(results)

    def _pycocotools(self, results: list[dict]) -> dict[str, float | None]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            if results:
                detections = self._gt.loadRes(results)
            else:
                # loadRes cannot load an empty list; an empty result set evaluates fine.
                detections = COCO()
                detections.dataset = {
                    "images": list(self._gt.dataset["images"]),
                    "annotations": [],
                    "categories": copy.deepcopy(self._gt.dataset["categories"]),
                }
                detections.createIndex()
            evaluator = COCOeval(self._gt, detections, self.iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return _percent(evaluator.stats)

    def _faster_coco_eval(self, results: list[dict]) -> dict[str, float | None]:
        from faster_coco_eval import COCOeval_faster

        detections = self._gt.loadRes(results)
        evaluator = COCOeval_faster(
            self._gt, detections, self.iou_type, print_function=_quiet, rle_iou_max_workers=self.threads
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        return _percent(evaluator.stats)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's print_function: it reports progress we do not want on stdout."""


def empty_input_warnings(
    gt: GroundTruth, records: list, empty_predictions: str = EMPTY_PREDICTIONS_WARNING
) -> list[str]:
    """The warnings for a GT without annotations and for no detections, also issued as Python
    warnings (to the caller of the caller)."""
    found = [
        message
        for message, empty in ((EMPTY_GT_WARNING, not gt.data["annotations"]), (empty_predictions, not records))
        if empty
    ]
    for message in found:
        warnings.warn(message, stacklevel=3)
    return found


def _unique_iou_types(iou_types: Sequence[str] | None) -> list[str]:
    """The IoU types asked for (default: all), without repeats; InputError for an unknown one."""
    iou_types = list(dict.fromkeys(iou_types or IOU_TYPES))
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise InputError(f"unknown IoU type {iou_type!r}; expected one of {', '.join(IOU_TYPES)}")
    return iou_types


def _keep_box_ap_if_boxes(iou_types: list[str], gt: GroundTruth, records: list[dict], explicit: bool) -> None:
    """Keep "bbox" in ``iou_types`` where both files have boxes. Otherwise remove it when it was
    only the default (not ``explicit``), or raise InputError naming the GT annotations without a
    box when it was asked for."""
    missing = [i for i, ann in enumerate(gt.data["annotations"]) if "bbox" not in ann]
    if not explicit and (missing or not records or not all("bbox" in r for r in records)):
        iou_types.remove("bbox")  # by default, box AP only where both files have boxes
    elif missing:
        raise InputError(
            f"{gt.source}: annotations[{missing[0]}] (and {len(missing) - 1} more) have no 'bbox', needed for box AP"
        )


def evaluate(
    gt: str | os.PathLike | Mapping | GroundTruth,
    predictions: str | os.PathLike | Sequence[Mapping],
    *,
    iou_types: Sequence[str] | None = None,
    backend: str = DEFAULT_BACKEND,
    cityscapes_root: str | os.PathLike | None = None,
    split: str = "val",
    threads: int = 1,
    workers: int = 1,
) -> dict:
    """Evaluate a COCO results file; returns the content of eval.json (docs/design.md).

    Args:
        gt: COCO GT file path or loaded dict.
        predictions: COCO results file path or loaded list.
        iou_types: subset of ``("segm", "bbox")``; default: ``segm``, plus ``bbox`` when every
            detection has a box.
        backend: COCO evaluation backend.
        cityscapes_root: Cityscapes root (with ``gtFine/<split>``): add the official
            Cityscapes AP / AP50 (per class too), computed by cityscapesscripts.
        split: Cityscapes split of the GT file.
        threads: threads for faster-coco-eval's mask IoU (at most the usable CPUs).
        workers: processes of the official Cityscapes AP, matching images in parallel (0: one per
            usable CPU; at most those).
    Raises:
        InputError: invalid GT or predictions (file, record, what is wrong).
    """
    explicit = iou_types is not None
    iou_types = _unique_iou_types(iou_types)
    check_backend(backend)
    workers = worker_count(workers)
    needs_masks = "segm" in iou_types or cityscapes_root is not None
    if not isinstance(gt, GroundTruth):
        gt = load_ground_truth(gt, need_segmentation=needs_masks)
    records = load_predictions(
        predictions, gt, need_segmentation=needs_masks, need_bbox=explicit and "bbox" in iou_types
    )
    warnings_list = empty_input_warnings(gt, records)
    if "bbox" in iou_types:
        _keep_box_ap_if_boxes(iou_types, gt, records, explicit)

    result: dict[str, Any] = {
        "gt": gt.path,
        "predictions": os.fspath(predictions) if isinstance(predictions, (str, os.PathLike)) else None,
        "backend": backend,
        "num_images": len(gt.images),
        "num_predictions": len(records),
        "warnings": warnings_list,
    }
    for iou_type in iou_types:
        result[iou_type] = CocoEvaluator(gt, iou_type, backend, min(threads, usable_cpus()))(records)
    if cityscapes_root is not None:
        from dcl.data.cityscapes import cityscapes_instance_ap

        result["cityscapes"] = cityscapes_instance_ap(gt, records, cityscapes_root, split, workers)
    return result


def _cell(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def format_stats_table(
    rows: Mapping[str, Mapping[str, float | None]], names: Sequence[str] = STAT_NAMES, label_width: int = 8
) -> str:
    """A fixed-width table: one row per entry of ``rows``, one column per statistic."""
    lines = [" " * label_width + "".join(f"{name:>7}" for name in names)]
    for label, stats in rows.items():
        lines.append(f"{label:<{label_width}}" + "".join(_cell(stats.get(name)) for name in names))
    return "\n".join(lines)


def _format_result(result: Mapping) -> str:
    lines = [
        f"COCO AP ({result['backend']}), {result['num_predictions']} detections on "
        f"{result['num_images']} images; percent, '-' = no GT of that size"
    ]
    rows = {iou_type: result[iou_type] for iou_type in IOU_TYPES if iou_type in result}
    if rows:
        lines.append(format_stats_table(rows))
    if "cityscapes" in result:
        cityscapes = result["cityscapes"]
        lines.append("")
        lines.append(
            f"Cityscapes instance-level (cityscapesscripts): AP {_cell(cityscapes['AP'], 0)}  "
            f"AP50 {_cell(cityscapes['AP50'], 0)}"
        )
        lines.append(format_stats_table(cityscapes["per_class"], names=("AP", "AP50"), label_width=12))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, predictions_help="COCO results file (list of detections)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="COCO evaluation implementation (identical numbers; default: %(default)s)",
    )
    parser.add_argument(
        "--iou-types",
        nargs="+",
        choices=IOU_TYPES,
        metavar="TYPE",
        help="segm and/or bbox (default: segm, and bbox when the detections have boxes)",
    )
    parser.add_argument(
        "--cityscapes-root",
        metavar="ROOT",
        help="Cityscapes root (containing gtFine/): also compute the official Cityscapes AP",
    )
    parser.add_argument("--split", default="val", help="Cityscapes split of the GT file (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="eval.json", help="write the results as JSON (atomically)")
    parser.add_argument(
        "--threads",
        type=at_least(1),
        default=1,
        help="threads for faster-coco-eval's mask IoU, at most the usable CPUs (default: %(default)s)",
    )
    parser.add_argument(
        "-j",
        "--workers",
        type=at_least(0),
        default=1,
        help="worker processes of the official Cityscapes AP (images matched in parallel), at most the "
        "usable CPUs (0 = one per CPU; default: %(default)s)",
    )


def run_on_inputs(
    args: argparse.Namespace, compute: Callable[[Any, Any], dict], formatter: Callable[[dict], str], command: str
) -> int:
    """The body of ``dcl evaluate`` and ``dcl errors``: ``compute(gt, predictions)`` on the inputs of
    :func:`dcl.data.coco.add_input_arguments`, the result (with its inputs named) to ``-o`` and, formatted,
    to stdout; its warnings to stderr."""
    refuse_output_over_input(
        args.output,
        {"predictions": args.predictions, "ground truth": args.annotations, "predictions' GT": args.predictions_gt},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are in the result and printed below
        gt, predictions = inputs_on_subset(args.annotations, args.predictions, args.predictions_gt)
        result = compute(gt, predictions)
    result.update(predictions=args.predictions, predictions_gt=args.predictions_gt)
    if args.output:
        atomic_write_json(args.output, result)
    print(formatter(result))
    for message in result["warnings"]:
        print(f"{command}: warning: {message}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    def compute(gt, predictions):
        return evaluate(
            gt,
            predictions,
            iou_types=args.iou_types,
            backend=args.backend,
            cityscapes_root=args.cityscapes_root,
            split=args.split,
            threads=args.threads,
            workers=args.workers,
        )

    return run_on_inputs(args, compute, _format_result, "dcl evaluate")
