"""COCO ground truth and results: strict loading, validation and run-length-encoded mask helpers.

Shared by ``dcl evaluate`` and ``dcl errors``. Every problem with the input becomes a
``dcl.io.InputError`` that names the file, the record (index in the file's list) and what is
wrong, before any evaluation starts, so a bad file never produces a half-finished result.

Masks stay in COCO's compressed run-length encoding (RLE) throughout: pycocotools merges,
intersects and measures them without ever decoding a full-resolution array. The one operation
pycocotools lacks, the complement of a mask, is done here on the uncompressed run lengths
(:func:`rle_counts`, :func:`complement`).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from dcl.io import InputError, is_int, is_number, read_json

__all__ = [
    "STAT_NAMES",
    "GroundTruth",
    "load_ground_truth",
    "load_predictions",
    "segmentation_to_rle",
    "rle_counts",
    "complement",
    "compact_rle",
    "map_predictions_by_file_name",
    "occlusion_subset",
    "inputs_on_subset",
]

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# Report this many problems in one error message; the rest are counted.
_MAX_REPORTED_PROBLEMS = 5


@dataclass
class GroundTruth:
    """A validated COCO instance ground-truth file.

    ``data`` is the file's content as loaded (never modified here); ``source`` names it in
    messages; ``path`` is the file it came from (None for a dict); ``images`` and ``categories``
    index the records by id.
    """

    data: dict
    source: str
    path: str | None = None
    images: dict[int, dict] = field(default_factory=dict)
    categories: dict[int, dict] = field(default_factory=dict)


class _Problems:
    """Collects per-record problems so one error message can list the first few and count all."""

    def __init__(self, source: str):
        self.source = source
        self.messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < _MAX_REPORTED_PROBLEMS:
            self.messages.append(message)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        lines = "\n  ".join(self.messages)
        more = f"\n  ... and {self.count - len(self.messages)} more" if self.count > len(self.messages) else ""
        raise InputError(f"{self.source}: {self.count} invalid record(s):\n  {lines}{more}")


def _source_name(source: Any, default: str) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else default


def _load(source: Any, what: str) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return read_json(source, what)
    return source


# --------------------------------------------------------------------------------------------
# Run-length encoding helpers
# --------------------------------------------------------------------------------------------


def rle_counts(strings: Sequence[bytes | str]) -> list[np.ndarray]:
    """Decode COCO's compressed RLE strings to run lengths, all strings in one vectorised pass.

    The format (pycocotools' ``rleToString``): each run length is written in 5-bit groups, low
    bits first, as characters ``48 + group`` with bit 0x20 meaning "more groups follow" and bit
    0x10 of the last group the sign; from the fourth run on, the value stored is the difference
    to the run two places earlier.

    Args:
        strings: compressed ``counts`` values (``bytes`` or ASCII ``str``).
    Returns:
        One int64 array of run lengths per string (first run = zeros, column-major order).
    Raises:
        ValueError: a string is not valid compressed RLE.
    """
    if not strings:
        return []
    encoded = [s.encode("ascii") if isinstance(s, str) else bytes(s) for s in strings]
    lengths = np.fromiter((len(s) for s in encoded), dtype=np.int64, count=len(encoded))
    if lengths.sum() == 0:
        return [np.zeros(0, dtype=np.int64) for _ in encoded]
    chars = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    if chars.min() < 48 or chars.max() > 48 + 63:
        raise ValueError("compressed RLE contains characters outside '0'..'o'")
    chars = chars - np.uint8(48)
    last = (chars & 0x20) == 0  # the last character of each number
    string_ends = np.cumsum(lengths)
    if not last[string_ends[lengths > 0] - 1].all():
        raise ValueError("compressed RLE ends in the middle of a number")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group_lengths = ends - starts + 1
    longest = int(group_lengths.max())
    if longest > 12:
        raise ValueError("compressed RLE contains a number longer than 60 bits")
    # Numbers are 1-3 characters long: loop over character positions, not over numbers.
    values = (chars[starts] & 0x1F).astype(np.int64)
    for k in range(1, longest):
        longer = np.flatnonzero(group_lengths > k)
        values[longer] |= (chars[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(np.int64(1), 5 * group_lengths[negative])

    # Undo the delta coding per string: run m (m > 2) = stored value + run m-2, i.e. running
    # sums along the odd runs from 1 and along the even runs from 2.
    first_group = np.searchsorted(ends, string_ends - lengths)
    groups_per_string = np.diff(np.append(first_group, len(ends)))
    index_in_string = np.arange(len(ends)) - np.repeat(first_group, groups_per_string)
    counts = values
    for parity, lowest in ((0, 2), (1, 1)):
        in_chain = ((index_in_string & 1) == parity) & (index_in_string >= lowest)
        running = np.cumsum(np.where(in_chain, values, 0))
        before_string = np.concatenate(([0], running))[first_group]
        counts = np.where(in_chain, running - np.repeat(before_string, groups_per_string), counts)
    if (counts < 0).any():
        raise ValueError("compressed RLE decodes to a negative run length")
    return np.split(counts, np.cumsum(groups_per_string)[:-1])


def compact_rle(rle: Mapping) -> dict:
    """A compressed RLE with ``counts`` as ``str`` (JSON-serialisable, accepted by both AP backends)."""
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def complement(rle: Mapping) -> dict:
    """The mask's complement (pixels outside it), as compressed RLE.

    Run lengths alternate zeros/ones starting with zeros, so the complement is the same runs
    with a leading empty run of zeros added (or the existing one removed).
    """
    counts = rle_counts([rle["counts"]])[0].tolist()
    flipped = counts[1:] if counts and counts[0] == 0 else [0] + counts
    height, width = (int(v) for v in rle["size"])
    return compact_rle(mask_utils.frPyObjects({"size": [height, width], "counts": flipped}, height, width))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE.

    The same conversion as pycocotools' ``COCO.annToRLE``, so masks match what COCOeval sees.
    """
    if isinstance(segmentation, list):
        return compact_rle(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    if isinstance(segmentation["counts"], list):
        return compact_rle(mask_utils.frPyObjects(segmentation, height, width))
    return compact_rle(segmentation)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_polygons(segmentation: list, height: int, width: int, where: str, problems: _Problems) -> bool:
    """Check a polygon-list segmentation: non-empty, each polygon >= 3 x,y pairs of numbers near
    the ``width`` x ``height`` image."""
    if not segmentation:
        problems.add(f"{where}: 'segmentation' is an empty polygon list")
        return False
    for polygon in segmentation:
        if (
            not isinstance(polygon, list)
            or len(polygon) < 6
            or len(polygon) % 2
            or not all(is_number(v) for v in polygon)
        ):
            problems.add(f"{where}: a polygon must be a list of at least 3 x,y pairs of numbers")
            return False
        # pycocotools rasterises every edge pixel by pixel: far-off points exhaust the memory
        # (or overflow it: a segfault). One image size around the image is generous.
        xs, ys = polygon[0::2], polygon[1::2]
        if not (-width <= min(xs) and max(xs) <= 2 * width and -height <= min(ys) and max(ys) <= 2 * height):
            problems.add(
                f"{where}: polygon coordinates (x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}) "
                f"lie far outside the {width}x{height} image (width x height)"
            )
            return False
    return True


def _check_segmentation(
    segmentation: Any,
    height: int,
    width: int,
    where: str,
    problems: _Problems,
    compressed: list[tuple[str, bytes | str, int]],
) -> bool:
    """Check one segmentation's structure: polygons, or an RLE dict with ``size`` [height, width] of
    the image and ``counts``, either integers covering the image or a compressed string (queued in
    ``compressed`` for one batch decode)."""
    if isinstance(segmentation, list):
        return _check_polygons(segmentation, height, width, where, problems)
    if not isinstance(segmentation, Mapping) or "counts" not in segmentation or "size" not in segmentation:
        problems.add(f"{where}: 'segmentation' must be polygons or an RLE dict with 'size' and 'counts'")
        return False
    size = segmentation["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) for v in size)):
        problems.add(f"{where}: RLE 'size' must be [height, width], got {size!r}")
        return False
    if [int(size[0]), int(size[1])] != [height, width]:
        problems.add(
            f"{where}: mask size {int(size[0])}x{int(size[1])} (height x width) disagrees "
            f"with the image's {height}x{width}"
        )
        return False
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(is_int(c) and c >= 0 for c in counts):
            problems.add(f"{where}: uncompressed RLE 'counts' must be non-negative integers")
            return False
        if sum(counts) != height * width:
            problems.add(
                f"{where}: RLE covers {sum(counts)} pixels, the {height}x{width} image has "
                f"{height * width}: wrong mask size"
            )
            return False
        return True
    if not isinstance(counts, (str, bytes)):
        problems.add(f"{where}: RLE 'counts' must be a string (compressed) or a list of integers")
        return False
    compressed.append((where, counts, height * width))
    return True


def _check_compressed(compressed: list[tuple[str, bytes | str, int]], problems: _Problems) -> None:
    """Decode all queued compressed RLE strings at once; each must cover exactly its image.

    pycocotools trusts these strings blindly (a wrong one can make it write past its buffer),
    so checking them here is what makes a wrong mask size an error instead of a crash.
    """
    batch = 20000  # bounds the temporary arrays of the vectorised decoder
    for start in range(0, len(compressed), batch):
        chunk = compressed[start : start + batch]
        try:
            decoded = rle_counts([counts for _, counts, _ in chunk])
        except (ValueError, UnicodeEncodeError):
            decoded = []
            for where, counts, _ in chunk:  # find the culprit(s)
                try:
                    decoded.append(rle_counts([counts])[0])
                except (ValueError, UnicodeEncodeError) as error:
                    problems.add(f"{where}: RLE 'counts' is not valid compressed RLE ({error})")
                    decoded.append(None)
        for (where, _, pixels), counts in zip(chunk, decoded):
            if counts is not None and int(counts.sum()) != pixels:
                problems.add(
                    f"{where}: RLE covers {int(counts.sum())} pixels but its image has {pixels}: "
                    "wrong mask size or corrupted 'counts'"
                )


def _check_gt_lists(data: Any, name: str) -> None:
    """Raise InputError unless ``data`` is a dict with lists ``images``, ``annotations`` and
    ``categories``."""
    if not isinstance(data, Mapping):
        hint = " (this looks like a results file: pass it as PRED and the GT with -a)" if isinstance(data, list) else ""
        raise InputError(f"{name}: a COCO GT file must be a JSON object, got {type(data).__name__}{hint}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{name}: a COCO GT file needs a list '{key}'")


def _index_images(images: list, gt: GroundTruth, problems: _Problems) -> None:
    """Fill ``gt.images`` (id -> image) with the valid images: integer id, positive integer height
    and width, id not seen before; report the others."""
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(image, Mapping) or not is_int(image.get("id")):
            problems.add(f"{where}: needs an integer 'id'")
            continue
        if not (
            is_int(image.get("height")) and is_int(image.get("width")) and image["height"] > 0 and image["width"] > 0
        ):
            problems.add(f"{where} (id {image['id']}): needs positive integer 'height' and 'width'")
            continue
        if image["id"] in gt.images:
            problems.add(f"{where}: duplicate image id {image['id']}")
            continue
        gt.images[int(image["id"])] = image


def _index_categories(categories: list, gt: GroundTruth, problems: _Problems) -> None:
    """Fill ``gt.categories`` (id -> category) with the categories of a unique integer id; report
    the others."""
    for index, category in enumerate(categories):
        where = f"categories[{index}]"
        if not isinstance(category, Mapping) or not is_int(category.get("id")):
            problems.add(f"{where}: needs an integer 'id'")
        elif category["id"] in gt.categories:
            problems.add(f"{where}: duplicate category id {category['id']}")
        else:
            gt.categories[int(category["id"])] = category


def _check_gt_annotation(
    ann: Any, index: int, gt: GroundTruth, annotation_ids: set[int], problems: _Problems
) -> tuple[str, Mapping] | None:
    """Check one GT annotation's fields but its segmentation (id unique, recorded in
    ``annotation_ids``; known image and category; area, iscrowd, bbox); return where it is (for
    messages) and its image, or None after reporting its first problem."""
    where = f"annotations[{index}]"
    if not isinstance(ann, Mapping):
        problems.add(f"{where}: must be a JSON object")
        return None
    if not is_int(ann.get("id")):
        problems.add(f"{where}: needs an integer 'id'")
        return None
    where = f"annotations[{index}] (id {ann['id']})"
    if ann["id"] in annotation_ids:
        problems.add(f"{where}: duplicate annotation id")
        return None
    annotation_ids.add(ann["id"])
    image = gt.images.get(ann.get("image_id")) if is_int(ann.get("image_id")) else None
    if image is None:
        problems.add(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        return None
    if not (is_int(ann.get("category_id")) and ann["category_id"] in gt.categories):
        problems.add(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        return None
    if not is_number(ann.get("area")) or ann["area"] < 0:
        problems.add(f"{where}: needs a non-negative numeric 'area' (COCOeval uses it for the size ranges)")
        return None
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1, True, False):
        problems.add(f"{where}: 'iscrowd' must be 0 or 1")
        return None
    if "bbox" in ann and not (
        isinstance(ann["bbox"], list)
        and len(ann["bbox"]) == 4
        and all(is_number(v) for v in ann["bbox"])
        and ann["bbox"][2] >= 0
        and ann["bbox"][3] >= 0
    ):
        problems.add(f"{where}: 'bbox' must be [x, y, width, height] with width, height >= 0")
        return None
    return where, image


def load_ground_truth(source: str | os.PathLike | Mapping, *, need_segmentation: bool = True) -> GroundTruth:
    """Load and validate a COCO instance GT file (or an already loaded dict; it is not modified).

    Checks: images with unique integer ids and positive height/width; categories with unique
    integer ids; annotations with unique integer ids, known image and category ids, a numeric
    ``area``, and (when ``need_segmentation``) polygons or an RLE of the image's size.
    """
    name = _source_name(source, "GT (dict)")
    data = _load(source, "GT file")
    _check_gt_lists(data, name)
    problems = _Problems(name)
    gt = GroundTruth(data=data, source=name, path=os.fspath(source) if isinstance(source, (str, os.PathLike)) else None)
    _index_images(data["images"], gt, problems)
    _index_categories(data["categories"], gt, problems)
    problems.raise_if_any()

    annotation_ids: set[int] = set()
    compressed: list[tuple[str, bytes | str, int]] = []
    for index, ann in enumerate(data["annotations"]):
        checked = _check_gt_annotation(ann, index, gt, annotation_ids, problems)
        if checked is None:
            continue
        where, image = checked
        if need_segmentation:
            if "segmentation" not in ann:
                problems.add(f"{where}: missing 'segmentation'")
                continue
            _check_segmentation(ann["segmentation"], image["height"], image["width"], where, problems, compressed)
    _check_compressed(compressed, problems)
    problems.raise_if_any()
    return gt


def _detections_list(data: Any, name: str) -> list:
    """The loaded results as a list; InputError for a dict (a GT file?), null, a string or a number."""
    if isinstance(data, Mapping):
        hint = " (this looks like a GT file: pass the GT with -a)" if "annotations" in data else ""
        raise InputError(f"{name}: a COCO results file must be a JSON list of detections{hint}")
    if data is None or isinstance(data, (str, bytes, int, float)):
        kind = {type(None): "null", str: "a string", bytes: "bytes", bool: "a boolean"}.get(type(data), "a number")
        raise InputError(f"{name}: a COCO results file must be a JSON list of detections, got {kind}")
    if not isinstance(data, list):
        data = list(data)
    return data


def _detection_record(det: Any, index: int, gt: GroundTruth, problems: _Problems) -> tuple[str, Mapping, dict] | None:
    """Check one detection's image_id, category_id and score against ``gt``; return where it is
    (for messages), its image and its record (image_id, category_id, score), or None after
    reporting its first problem."""
    where = f"record {index}"
    if not isinstance(det, Mapping):
        problems.add(f"{where}: must be a JSON object")
        return None
    image = gt.images.get(det.get("image_id")) if is_int(det.get("image_id")) else None
    if image is None:
        problems.add(f"{where}: image_id {det.get('image_id')!r} is not in the GT file {gt.source}")
        return None
    where = f"record {index} (image_id {det['image_id']})"
    if not (is_int(det.get("category_id")) and det["category_id"] in gt.categories):
        problems.add(f"{where}: category_id {det.get('category_id')!r} is not in the GT file's categories")
        return None
    if "score" not in det:
        problems.add(f"{where}: missing 'score'")
        return None
    if not is_number(det["score"]):
        problems.add(f"{where}: 'score' must be a finite number, got {det['score']!r}")
        return None
    record = {
        "image_id": int(det["image_id"]),
        "category_id": int(det["category_id"]),
        "score": float(det["score"]),
    }
    return where, image, record


def _add_detection_geometry(
    det: Mapping,
    record: dict,
    image: Mapping,
    where: str,
    problems: _Problems,
    compressed: list[tuple[str, bytes | str, int]],
    *,
    need_segmentation: bool,
    need_bbox: bool,
) -> bool:
    """Check a detection's bbox and segmentation and copy them into ``record``; return whether
    the record is valid (else its problem is reported)."""
    if "bbox" in det:
        box = det["bbox"]
        if not (
            isinstance(box, (list, tuple))
            and len(box) == 4
            and all(is_number(v) for v in box)
            and box[2] >= 0
            and box[3] >= 0
        ):
            problems.add(f"{where}: 'bbox' must be [x, y, width, height] with width, height >= 0")
            return False
        record["bbox"] = [float(v) for v in box]
    elif need_bbox:
        problems.add(f"{where}: missing 'bbox' (needed for box AP)")
        return False
    if "segmentation" in det:
        if not _check_segmentation(det["segmentation"], image["height"], image["width"], where, problems, compressed):
            return False
        record["segmentation"] = det["segmentation"]
    elif need_segmentation:
        problems.add(f"{where}: missing 'segmentation'")
        return False
    return True


def load_predictions(
    source: str | os.PathLike | Iterable[Mapping],
    gt: GroundTruth,
    *,
    need_segmentation: bool = True,
    need_bbox: bool = False,
) -> list[dict]:
    """Load and validate COCO results against ``gt``; return normalised copies.

    Each returned record has ``image_id``, ``category_id``, ``score`` and, when present in the
    input, ``segmentation`` (compressed RLE, ``counts`` as ``str``) and ``bbox``. Records keep
    their order (AP depends on it for equal scores). The input is not modified.

    Raises:
        InputError: not a list; a record without ``score`` / ``segmentation`` (when needed) /
            ``bbox`` (when needed); an image or category id not in the GT; a mask whose size
            disagrees with its image.
    """
    name = _source_name(source, "predictions (list)")
    data = _detections_list(_load(source, "predictions file"), name)
    problems = _Problems(name)
    compressed: list[tuple[str, bytes | str, int]] = []
    records: list[dict] = []
    for index, det in enumerate(data):
        checked = _detection_record(det, index, gt, problems)
        if checked is None:
            continue
        where, image, record = checked
        if _add_detection_geometry(
            det, record, image, where, problems, compressed, need_segmentation=need_segmentation, need_bbox=need_bbox
        ):
            records.append(record)
    _check_compressed(compressed, problems)
    problems.raise_if_any()
    for record in records:
        if "segmentation" in record:
            image = gt.images[record["image_id"]]
            record["segmentation"] = segmentation_to_rle(record["segmentation"], image["height"], image["width"])
    return records


def _image_name(image: Mapping) -> str:
    return os.path.basename(str(image.get("file_name", "")))


def map_predictions_by_file_name(
    predictions: str | os.PathLike | Sequence[Mapping], source: GroundTruth, target: GroundTruth
) -> list[dict]:
    """Predictions made on ``source``'s images, re-keyed to ``target``'s image ids by file name
    (its base name, so ``val2017/x.jpg`` and ``x.jpg`` agree). Detections on images that ``target``
    lacks are dropped: how a subset of val (COCO-OCC) is scored from the val predictions.

    Raises:
        InputError: an image of ``target`` that ``source`` does not have, or a file name that
            is not unique in either file.
    """
    records = _load(predictions, "predictions file")
    name = _source_name(predictions, "predictions (list)")
    if not isinstance(records, list):
        raise InputError(f"{name}: a COCO results file must be a JSON list, got {type(records).__name__}")
    ids_by_name: dict[str, int] = {}
    for gt in (source, target):
        names = [_image_name(image) for image in gt.images.values()]
        duplicate = next((n for n, count in Counter(names).items() if count > 1), None)
        if duplicate is not None:
            raise InputError(
                f"{gt.source}: file name {duplicate!r} occurs more than once, so images cannot be matched by file name"
            )
    for image_id, image in source.images.items():
        ids_by_name[_image_name(image)] = image_id
    target_of_source: dict[int, int] = {}
    missing = []
    for image_id, image in target.images.items():
        source_id = ids_by_name.get(_image_name(image))
        if source_id is None:
            missing.append(_image_name(image))
        else:
            target_of_source[source_id] = image_id
    if missing:
        raise InputError(
            f"{target.source}: {len(missing)} image(s) are not in {source.source} "
            f"(matched by file name), e.g. {missing[0]!r}"
        )
    mapped = []
    for record in records:
        image_id = record.get("image_id") if isinstance(record, Mapping) else None
        if image_id in target_of_source:
            mapped.append({**record, "image_id": target_of_source[image_id]})
    return mapped


def occlusion_subset(gt: GroundTruth, min_overlap: float = 0.2) -> dict:
    """The images of a COCO GT in which objects occlude each other, as a COCO GT of their own.

    An image belongs to the subset when two of its non-crowd instances have boxes whose
    intersection covers at least ``min_overlap`` of the smaller box (the criterion of BCNet's
    COCO-OCC, 0.2). Images and annotations are renumbered 1..N in the input's order (so using
    the subset with val predictions needs the mapping by file name, as for the real COCO-OCC);
    file names, sizes and categories are kept.
    """
    by_image: dict[int, list[Mapping]] = {image_id: [] for image_id in gt.images}
    for ann in gt.data["annotations"]:
        by_image[ann["image_id"]].append(ann)

    def occluded(anns: list[Mapping]) -> bool:
        boxes = [ann["bbox"] for ann in anns if not ann.get("iscrowd") and "bbox" in ann]
        for i, (x0, y0, w0, h0) in enumerate(boxes):
            for x1, y1, w1, h1 in boxes[i + 1 :]:
                inter = max(0.0, min(x0 + w0, x1 + w1) - max(x0, x1)) * max(0.0, min(y0 + h0, y1 + h1) - max(y0, y1))
                smaller = min(w0 * h0, w1 * h1)
                if smaller > 0 and inter >= min_overlap * smaller:
                    return True
        return False

    images, annotations = [], []
    for image in gt.data["images"]:
        anns = by_image[image["id"]]
        if not occluded(anns):
            continue
        new_id = len(images) + 1
        images.append({**image, "id": new_id})
        annotations += [{**ann, "id": len(annotations) + k + 1, "image_id": new_id} for k, ann in enumerate(anns)]
    return {
        "info": {
            "description": f"occlusion subset of {gt.source}: images with two instances whose "
            f"boxes overlap by >= {min_overlap:g} of the smaller box"
        },
        "images": images,
        "annotations": annotations,
        "categories": list(gt.data["categories"]),
    }


def inputs_on_subset(
    annotations: str | os.PathLike, predictions: str | os.PathLike, predictions_gt: str | os.PathLike | None
) -> tuple[GroundTruth | str | os.PathLike, list[dict] | str | os.PathLike]:
    """GT and predictions for ``dcl evaluate`` / ``dcl errors``: as given, or, with
    ``predictions_gt`` (the GT whose image ids the predictions use), the predictions mapped onto
    ``annotations``' images by file name (``--predictions-gt``)."""
    if predictions_gt is None:
        return annotations, predictions
    gt = load_ground_truth(annotations)
    source = load_ground_truth(predictions_gt, need_segmentation=False)
    return gt, map_predictions_by_file_name(predictions, source, gt)


def add_input_arguments(parser: argparse.ArgumentParser, predictions_help: str) -> None:
    """The inputs of ``dcl evaluate`` and ``dcl errors``: PRED.json, ``-a GT.json`` and
    ``--predictions-gt`` (see :func:`inputs_on_subset`)."""
    parser.add_argument("predictions", metavar="PRED.json", help=predictions_help)
    parser.add_argument("-a", "--annotations", metavar="GT.json", required=True, help="COCO ground-truth file")
    parser.add_argument(
        "--predictions-gt",
        metavar="VAL.json",
        help="the GT whose image ids PRED uses, when GT.json is a subset of it with other "
        "ids (COCO-OCC): detections are mapped to GT.json's images by file name, "
        "those on other images dropped",
    )
