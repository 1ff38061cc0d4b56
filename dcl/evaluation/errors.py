"""``dcl errors``: how much mask AP each kind of segmentation error costs (fFP, bFP, FN).

The analysis of the DCL paper (specification: docs/method.md, "The segmentation-error
analysis"). Per image, over the non-crowd GT (images with no such GT, or with no detections, keep
their detections unchanged):

1. both lists are sorted by category id (stable, so GT keep their file order within a category);
   the IoU between detections and GT is class-aware (0 across categories), mask IoU or, with
   ``iou_type="bbox"``, box IoU;
2. each detection is matched to the GT with the highest IoU >= 0.1, ties going to the later GT;
3. each kind of error is removed from every detection's mask:

   - ``fFP`` (foreground false positives): remove the pixels of the *other* GT instances (a
     pixel of the detection's own GT is never removed, even where another GT overlaps it: COCO
     instances may overlap, Cityscapes' cannot);
   - ``bFP`` (background false positives): remove the pixels outside every GT instance;
   - ``FN`` (false negatives): add the matched GT's pixels the detection misses;
   - ``A&B``: remove several kinds, in that order (matching is done once, on the original masks);

4. COCO mask AP of the fixed detections (``bbox`` dropped: areas are mask areas) minus the
   baseline AP is what that kind of error costs.

A detection that matches no GT is left unchanged by fFP and FN (it has no "own" instance); bFP
still removes its pixels outside the GT. The original tool instead treated it as matched to the
image's last GT (after the stable sort by category); ``legacy_unmatched=True`` reproduces that
exactly, so the paper's published tables can be reproduced and the size of the defect shown.

Everything works on run-length-encoded masks (pycocotools merge / IoU / area, plus
``dcl.data.coco.complement``): no full-resolution mask is ever decoded, so memory does not grow with
image size and the per-image work is a few RLE operations per detection.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from dcl.progress import progress_bar

from dcl.argtypes import at_least
from dcl.data.coco import (
    STAT_NAMES,
    GroundTruth,
    add_input_arguments,
    compact_rle,
    complement,
    load_ground_truth,
    load_predictions,
    segmentation_to_rle,
)
from dcl.evaluation.evaluate import (
    BACKENDS,
    DEFAULT_BACKEND,
    CocoEvaluator,
    check_backend,
    empty_input_warnings,
    format_stats_table,
    run_on_inputs,
    worker_count,
)
from dcl.io import InputError
from dcl.names import ERROR_KINDS, IOU_TYPES

__all__ = [
    "ERROR_KINDS",
    "DEFAULT_TYPES",
    "MATCH_IOU",
    "IOU_TYPES",
    "parse_error_type",
    "fix_predictions",
    "analyze",
    "format_report",
    "add_arguments",
    "run",
]

# ERROR_KINDS (re-exported from dcl.names): the single kinds; by default each is removed on its own.
DEFAULT_TYPES = ERROR_KINDS
MATCH_IOU = 0.1

EMPTY_PREDICTIONS_WARNING = "the predictions file has no detections: every AP and AR is 0, nothing to fix"


def parse_error_type(name: str) -> tuple[str, ...]:
    """``"fFP&bFP"`` -> ``("fFP", "bFP")``; names are case-insensitive, each at most once."""
    canonical = {kind.lower(): kind for kind in ERROR_KINDS}
    kinds = []
    for part in name.split("&"):
        kind = canonical.get(part.strip().lower())
        if kind is None:
            raise InputError(
                f"unknown error type {part.strip()!r} in {name!r}: use {', '.join(ERROR_KINDS)} "
                "or combinations joined by '&' (e.g. 'fFP&bFP')"
            )
        if kind in kinds:
            raise InputError(f"error type {name!r} lists {kind} twice")
        kinds.append(kind)
    return tuple(kinds)


@dataclass
class _ImageTask:
    """One image's non-crowd GT (stably sorted by category) and detections, as RLE.

    Boxes are [x, y, width, height]; ``det_positions`` index the full prediction list.
    """

    gt_categories: np.ndarray  # (G,) int
    gt_masks: list[dict]  # G compressed RLEs
    gt_boxes: np.ndarray  # (G, 4) float
    det_positions: np.ndarray  # (D,) int
    det_categories: np.ndarray  # (D,) int
    det_masks: list[dict]  # D compressed RLEs
    det_boxes: np.ndarray  # (D, 4) float


def _match(task: _ImageTask, iou_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best GT.

    Returns:
        (best, matched): (D,) int index into ``task.gt_masks`` of the GT with the highest
        class-aware IoU (ties: the later GT), and (D,) bool, that IoU >= 0.1.
    """
    num_gt = len(task.gt_masks)
    crowd = [0] * num_gt
    if iou_type == "segm":
        ious = mask_utils.iou(task.det_masks, task.gt_masks, crowd)
    else:
        ious = mask_utils.iou(task.det_boxes, task.gt_boxes, crowd)
    ious = np.array(ious, dtype=np.float64).reshape(len(task.det_masks), num_gt)
    ious[task.det_categories[:, None] != task.gt_categories[None, :]] = 0.0
    # argmax returns the first maximum; on the reversed columns that is the last (= later GT).
    best = num_gt - 1 - np.argmax(ious[:, ::-1], axis=1)
    return best, ious[np.arange(len(best)), best] >= MATCH_IOU


class _ImageMasks:
    """Unions of an image's GT masks, each computed once and only when needed."""

    def __init__(self, gt_masks: list[dict]):
        self.gt_masks = gt_masks
        self._prefix: list[dict] = []  # _prefix[i] = union of gt_masks[:i+1]
        self._suffix: dict[int, dict] = {}  # _suffix[i] = union of gt_masks[i:]
        self._keep: dict[int, dict | None] = {}

    def _union(self, masks: list[dict]) -> dict:
        return masks[0] if len(masks) == 1 else mask_utils.merge(masks, intersect=False)

    def prefix(self, i: int) -> dict:
        while len(self._prefix) <= i:
            n = len(self._prefix)
            self._prefix.append(self.gt_masks[0] if n == 0 else self._union([self._prefix[-1], self.gt_masks[n]]))
        return self._prefix[i]

    def suffix(self, i: int) -> dict:
        if i not in self._suffix:
            last = len(self.gt_masks) - 1
            self._suffix[i] = self.gt_masks[i] if i == last else self._union([self.gt_masks[i], self.suffix(i + 1)])
        return self._suffix[i]

    def union_all(self) -> dict:
        return self.prefix(len(self.gt_masks) - 1)

    def keep_for(self, g: int) -> dict | None:
        """What fFP keeps of a detection matched to GT ``g``: pixels of ``g`` itself or of no
        other GT (None: there is no other GT, keep everything)."""
        if g not in self._keep:
            parts = ([self.prefix(g - 1)] if g > 0 else []) + (
                [self.suffix(g + 1)] if g < len(self.gt_masks) - 1 else []
            )
            self._keep[g] = (
                mask_utils.merge([complement(self._union(parts)), self.gt_masks[g]], intersect=False) if parts else None
            )
        return self._keep[g]


def _fix_image(
    task: _ImageTask, types: Sequence[tuple[str, ...]], iou_type: str, legacy_unmatched: bool
) -> tuple[list[list[dict]], int]:
    """Remove each error type from every detection of one image.

    Returns:
        (fixed, unmatched): ``fixed[t][d]`` is detection d's mask with ``types[t]`` removed
        (compact RLE); ``unmatched`` counts detections that match no GT.
    """
    best, matched = _match(task, iou_type)
    # -1: no GT of its own. The original tool used the image's last GT instead (the defect).
    targets = np.where(matched, best, len(task.gt_masks) - 1 if legacy_unmatched else -1)
    masks = _ImageMasks(task.gt_masks)
    fixed_per_type = []
    for kinds in types:
        fixed = []
        for det_mask, target in zip(task.det_masks, targets):
            mask = det_mask
            for kind in kinds:
                if kind == "bFP":
                    mask = mask_utils.merge([mask, masks.union_all()], intersect=True)
                elif target < 0:
                    continue  # fFP and FN need the detection's own GT; an unmatched one has none
                elif kind == "fFP":
                    keep = masks.keep_for(int(target))
                    if keep is not None:
                        mask = mask_utils.merge([mask, keep], intersect=True)
                else:  # FN
                    mask = mask_utils.merge([mask, task.gt_masks[target]], intersect=False)
            fixed.append(compact_rle(mask))
        fixed_per_type.append(fixed)
    return fixed_per_type, int(np.count_nonzero(~matched))


def _image_tasks(gt: GroundTruth, predictions: Sequence[Mapping]) -> list[_ImageTask]:
    """Group GT and detections by image; only images with both non-crowd GT and detections."""
    detections_by_image: dict[int, list[int]] = {}
    for position, det in enumerate(predictions):
        detections_by_image.setdefault(det["image_id"], []).append(position)
    gt_by_image: dict[int, list[Mapping]] = {}
    for ann in gt.data["annotations"]:
        if not ann.get("iscrowd", 0) and ann["image_id"] in detections_by_image:
            gt_by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = []
    for image_id in sorted(gt_by_image):
        image = gt.images[image_id]
        height, width = int(image["height"]), int(image["width"])
        anns = sorted(gt_by_image[image_id], key=lambda a: a["category_id"])  # stable: file order kept
        gt_masks = [segmentation_to_rle(a["segmentation"], height, width) for a in anns]
        gt_boxes = np.array(
            [a["bbox"] if "bbox" in a else mask_utils.toBbox(m) for a, m in zip(anns, gt_masks)], dtype=np.float64
        ).reshape(-1, 4)
        positions = sorted(detections_by_image[image_id], key=lambda p: predictions[p]["category_id"])
        det_masks = [predictions[p]["segmentation"] for p in positions]
        det_boxes = np.array(
            [
                predictions[p]["bbox"] if "bbox" in predictions[p] else mask_utils.toBbox(m)
                for p, m in zip(positions, det_masks)
            ],
            dtype=np.float64,
        ).reshape(-1, 4)
        tasks.append(
            _ImageTask(
                gt_categories=np.array([a["category_id"] for a in anns], dtype=np.int64),
                gt_masks=gt_masks,
                gt_boxes=gt_boxes,
                det_positions=np.array(positions, dtype=np.int64),
                det_categories=np.array([predictions[p]["category_id"] for p in positions], dtype=np.int64),
                det_masks=det_masks,
                det_boxes=det_boxes,
            )
        )
    return tasks


def _check_options(types: Iterable[str], iou_type: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """The canonical type names (``"fFP&bFP"``) and their parsed kinds, in the given order."""
    if iou_type not in IOU_TYPES:
        raise InputError(f"unknown IoU type {iou_type!r}; expected one of {', '.join(IOU_TYPES)}")
    parsed = [parse_error_type(t) for t in types]
    names = ["&".join(kinds) for kinds in parsed]
    if not names:
        raise InputError("no error types given")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"error type(s) listed twice: {', '.join(sorted(duplicates))}")
    return names, parsed


def _with_masks(
    predictions: Sequence[Mapping], tasks: Sequence[_ImageTask], fixed_by_task: Iterable[list[dict]]
) -> list[dict]:
    """The prediction list with the fixed masks of the analysed images put in."""
    result = [dict(p) for p in predictions]
    for task, fixed in zip(tasks, fixed_by_task):
        for position, mask in zip(task.det_positions, fixed):
            result[position]["segmentation"] = mask
    return result


def fix_predictions(
    gt: str | os.PathLike | Mapping | GroundTruth,
    predictions: str | os.PathLike | Sequence[Mapping],
    types: Sequence[str] = DEFAULT_TYPES,
    iou_type: str = "segm",
    legacy_unmatched: bool = False,
) -> dict[str, list[dict]]:
    """The predictions with each error type removed (the masks the AP is then measured on).

    Returns:
        ``{type name: prediction list}``, each list in the input order, masks as compressed RLE.
    """
    names, parsed = _check_options(types, iou_type)
    if not isinstance(gt, GroundTruth):
        gt = load_ground_truth(gt)
    records = load_predictions(predictions, gt)
    tasks = _image_tasks(gt, records)
    per_task = [_fix_image(task, parsed, iou_type, legacy_unmatched)[0] for task in tasks]
    return {name: _with_masks(records, tasks, (fixed[t] for fixed in per_task)) for t, name in enumerate(names)}


def _delta(fixed: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> dict[str, float | None]:
    return {
        name: None if fixed[name] is None or baseline[name] is None else fixed[name] - baseline[name]
        for name in STAT_NAMES
    }


@dataclass(frozen=True)
class _Fixing:
    """What fixing the images and evaluating them needs: the GT, the AP backend, the images, the
    error types (parsed) and the matching; a worker process gets it once, from the pool's initializer."""

    gt: GroundTruth
    backend: str
    tasks: list[_ImageTask]
    types: list[tuple[str, ...]]
    iou_type: str
    legacy_unmatched: bool

    def fix(self, index: int, types: Sequence[tuple[str, ...]] | None = None) -> tuple[list[list[dict]], int]:
        """:func:`_fix_image` on image ``index``, for ``types`` (default: all of them)."""
        return _fix_image(
            self.tasks[index], self.types if types is None else types, self.iou_type, self.legacy_unmatched
        )


def _analyze_here(fixing: _Fixing, records: list[dict], names: list[str], bar: tqdm) -> tuple[dict[str, dict], int]:
    """One process, one error type at a time: only one set of fixed masks is alive at once."""
    evaluator = CocoEvaluator(fixing.gt, "segm", fixing.backend)
    stats = {"baseline": evaluator(records)}
    bar.update(1)
    unmatched = 0
    for t, name in enumerate(names):
        bar.set_description(name, refresh=False)
        per_task = []
        for index in range(len(fixing.tasks)):
            fixed, count = fixing.fix(index, [fixing.types[t]])
            per_task.append(fixed[0])
            unmatched += count if t == 0 else 0
            bar.update(1)
        stats[name] = evaluator(_with_masks(records, fixing.tasks, per_task))
        bar.update(1)
    return stats, unmatched


# Per-worker state, set once per process by the pool's initializer (inherited, not pickled, where
# processes are forked): the images to fix (a _Fixing) and the GT evaluator.
_WORKER: dict[str, Any] = {}


def _init_worker(fixing: _Fixing) -> None:
    _WORKER.update(fixing=fixing)


def _fix_in_worker(index: int) -> tuple[int, list[list[dict]], int]:
    fixed, unmatched = _WORKER["fixing"].fix(index)
    return index, fixed, unmatched


def _evaluate_in_worker(predictions: list[dict]) -> dict[str, float | None]:
    if "evaluator" not in _WORKER:
        _WORKER["evaluator"] = CocoEvaluator(_WORKER["fixing"].gt, "segm", _WORKER["fixing"].backend)
    return _WORKER["evaluator"](predictions)


def _analyze_in_pool(
    pool: Any, records: list[dict], tasks: list[_ImageTask], names: list[str], workers: int, bar: tqdm
) -> tuple[dict[str, dict], int]:
    """Worker processes (set up by ``_init_worker``) fix the images, all types in one pass, and
    evaluate the AP of the baseline and of each type; the baseline AP is computed while the images
    are being fixed."""
    pending = {"baseline": pool.apply_async(_evaluate_in_worker, (records,))}
    per_type: list[list[Any] | None] = [[None] * len(tasks) for _ in names]
    unmatched = 0
    chunksize = max(1, len(tasks) // (workers * 8))
    for index, fixed, count in pool.imap_unordered(_fix_in_worker, range(len(tasks)), chunksize):
        for t in range(len(names)):
            per_type[t][index] = fixed[t]
        unmatched += count
        bar.update(len(names))
    for t, name in enumerate(names):
        pending[name] = pool.apply_async(_evaluate_in_worker, (_with_masks(records, tasks, per_type[t]),))
        per_type[t] = None  # the pool has its own copy now
    bar.set_description("AP", refresh=False)
    stats = {}
    for key, job in pending.items():
        stats[key] = job.get()
        bar.update(1)
    return stats, unmatched


def _fixed_stats(
    fixing: _Fixing, records: list[dict], names: list[str], workers: int, progress: bool
) -> tuple[dict[str, dict], int]:
    """The AP statistics of the baseline and of each fixed error type (``stats["baseline"]``,
    ``stats[name]``) and the number of unmatched detections, computed in a pool of ``workers``
    processes when more than one (and there are images), else here; with a progress bar."""
    pool = None
    tasks = fixing.tasks
    if workers > 1 and tasks:
        # Created before the progress bar's monitor thread exists: forking a threaded process is unsafe.
        pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(fixing,))
    bar = progress_bar(len(names) * len(tasks) + len(names) + 1, "error analysis", "step", enabled=progress)
    try:
        if pool is not None:
            return _analyze_in_pool(pool, records, tasks, names, workers, bar)
        return _analyze_here(fixing, records, names, bar)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def analyze(
    gt: str | os.PathLike | Mapping | GroundTruth,
    pred: str | os.PathLike | Sequence[Mapping],
    types: Sequence[str] = DEFAULT_TYPES,
    iou_type: str = "segm",
    legacy_unmatched: bool = False,
    workers: int = 1,
    *,
    backend: str = DEFAULT_BACKEND,
    progress: bool = False,
) -> dict:
    """Run the segmentation-error analysis; returns the content of errors.json (docs/design.md).

    Args:
        gt: COCO GT file path or loaded dict.
        pred: COCO results file path or loaded list (masks as RLE).
        types: error types, e.g. ``["fFP", "bFP", "FN", "fFP&bFP"]``.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"`` (box IoU) for matching detections to GT.
        legacy_unmatched: reproduce the original tool's defect (see the module docstring).
        workers: processes (images are fixed and AP evaluations run in parallel); 0 = one per CPU.
        backend: COCO AP implementation (identical numbers).
        progress: show a progress bar on stderr (after 2 s).
    Returns:
        ``{"gt", "predictions", "iou_type", "legacy_unmatched", "types", "backend", "num_images",
        "num_predictions", "num_unmatched", "warnings", "baseline", "fixed", "delta"}``; the AP
        statistics (12 COCO names) in percent, ``None`` where COCO has no GT of that size.
    Raises:
        InputError: bad options, GT or predictions (file, record, what is wrong).
    """
    names, parsed = _check_options(types, iou_type)
    check_backend(backend)
    workers = worker_count(workers)
    if not isinstance(gt, GroundTruth):
        gt = load_ground_truth(gt)
    records = load_predictions(pred, gt)
    warnings_list = empty_input_warnings(gt, records, EMPTY_PREDICTIONS_WARNING)
    tasks = _image_tasks(gt, records)
    fixing = _Fixing(gt, backend, tasks, parsed, iou_type, legacy_unmatched)
    stats, unmatched = _fixed_stats(fixing, records, names, workers, progress)
    return {
        "gt": gt.path,
        "predictions": os.fspath(pred) if isinstance(pred, (str, os.PathLike)) else None,
        "iou_type": iou_type,
        "legacy_unmatched": bool(legacy_unmatched),
        "types": names,
        "backend": backend,
        "num_images": len(gt.images),
        "num_predictions": len(records),
        "num_unmatched": unmatched,
        "warnings": warnings_list,
        "baseline": stats["baseline"],
        "fixed": {name: stats[name] for name in names},
        "delta": {name: _delta(stats[name], stats["baseline"]) for name in names},
    }


def format_report(result: Mapping) -> str:
    """The readable table ``dcl errors`` prints: AP of the baseline, of each fixed set, and gains."""
    mode = (
        "legacy: unmatched detections treated as matched to the image's last GT"
        if result["legacy_unmatched"]
        else "unmatched detections left unchanged by fFP/FN"
    )
    width = max(8, *(len(n) + 2 for n in result["types"]))
    names = STAT_NAMES[:6]
    lines = [
        f"segmentation errors: {result['iou_type']} IoU matching, {mode}",
        f"{result['num_predictions']} detections on {result['num_images']} images, "
        f"{result['num_unmatched']} match no GT (IoU < {MATCH_IOU}); mask AP in percent",
        "",
        "AP after removing each error type:",
        format_stats_table({"baseline": result["baseline"], **result["fixed"]}, names, width),
        "",
        "gain over the baseline (what the error costs):",
        format_stats_table({name: result["delta"][name] for name in result["types"]}, names, width),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, predictions_help="COCO results file with masks (RLE)")
    parser.add_argument(
        "-t",
        "--types",
        nargs="+",
        default=list(DEFAULT_TYPES),
        metavar="TYPE",
        help="error types to remove: fFP, bFP, FN, or several joined by '&' (quote it "
        "in the shell: 'fFP&bFP'); default: %(default)s",
    )
    parser.add_argument(
        "--iou-type",
        choices=IOU_TYPES,
        default="segm",
        help="match detections to GT by mask (segm) or box IoU (bbox; default: %(default)s)",
    )
    parser.add_argument(
        "--legacy-unmatched",
        action="store_true",
        help="reproduce the original tool: a detection matching no GT is treated as matched "
        "to the image's last GT by fFP and FN (the published tables used this)",
    )
    parser.add_argument(
        "-j",
        "--workers",
        type=at_least(0),
        default=1,
        help="worker processes, at most the usable CPUs (0 = one per CPU; default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="COCO AP implementation (identical numbers; default: %(default)s)",
    )
    parser.add_argument("-o", "--output", metavar="OUT.json", help="write the results as JSON (atomically)")


def run(args: argparse.Namespace) -> int:
    def compute(gt, predictions):
        return analyze(
            gt,
            predictions,
            args.types,
            iou_type=args.iou_type,
            legacy_unmatched=args.legacy_unmatched,
            workers=args.workers,
            backend=args.backend,
            progress=True,
        )

    return run_on_inputs(args, compute, format_report, "dcl errors")
