"""Cityscapes <-> COCO: gtFine to a COCO instance file, and the official instance-level AP.

``cityscapes_to_coco`` turns ``gtFine/<split>/*/*_gtFine_instanceIds.png`` into a COCO instance
file for the 8 evaluated instance classes (the ``instancesonly_filtered_gtFine_<split>.json`` the
error analysis and ``cityscapes_fine_instance_seg_val`` use). Conventions (docs/design.md):
images sorted by path, ids 1..N, ``file_name`` relative to ``leftImg8bit/<split>``; categories
1..8 person, rider, car, truck, bus, train, motorcycle, bicycle, each with its
``cityscapes_label_id``; annotation ids 1..M in image order, within an image in increasing
instanceIds value; pixels of an instance class without an instance id (value < 1000, e.g. a
"car group") become one ``iscrowd: 1`` RLE annotation per class and image. Masks are exactly the
instanceIds pixels (``segmentation="rle"``) or their outer contours (``"polygon"``, as Detectron's
``convert_cityscapes_to_coco.py`` did; crowd regions and instances too small for a polygon stay
RLE). ``area`` is always the pixel count.

``style="detectron"`` instead reproduces the file Detectron's ``tools/convert_cityscapes_to_coco.py``
wrote (through the ``instances2dict_with_polygons`` helper of its install notes), the default GT
of the original error-analysis tool and so of the paper's error tables: only pixels with an
instance id (>= 1000) count, so group regions are dropped, not marked crowd; an instance's
segmentation is its external contours (OpenCV, every boundary pixel, no approximation); an
instance any of whose contours has 4 or fewer coordinates (a separate fragment of one or two
pixels) is dropped whole; ``iscrowd`` is 0, ``area`` the pixel count and the box the polygons'
extent with Detectron's ``+1`` width and height. Image ids, file names, category ids and the
annotation order are those of the default conversion, so one predictions file scores against
both.

``cityscapes_instance_ap`` scores COCO predictions with cityscapesscripts' own
``evalInstanceLevelSemanticLabeling`` (the AP the Cityscapes benchmark and the paper report): GT
instances from its ``instances2dict``, then its ``evaluateMatches`` and averages over all images,
as its ``evaluateImgLists`` chains them. Its per-image matching (``assignGt2Preds``) is done here
with the same fields and counts, the pixel counts taken on run-length encodings instead of
full-resolution arrays of a PNG per detection (``write_cityscapes_results`` writes that format,
for the benchmark server), which took most of the time; the images are matched in worker
processes when asked to. Tests check the result equals cityscapesscripts' on the PNG files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import multiprocessing
import os
import types
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image
from pycocotools import mask as mask_utils

from dcl import layout
from dcl.data.coco import GroundTruth, compact_rle
from dcl.io import InputError, atomic_write_json
from dcl.progress import progress_bar

__all__ = [
    "INSTANCE_LABELS",
    "CATEGORIES",
    "CONVERSION_STYLES",
    "cityscapes_to_coco",
    "write_cityscapes_results",
    "cityscapes_instance_ap",
]

# The 8 evaluated instance classes (person, rider, car, truck, bus, train, motorcycle, bicycle)
# in cityscapesscripts' label order, which is detectron2's order too: COCO category ids 1..8.
INSTANCE_LABELS = tuple(label for label in CITYSCAPES_LABELS if label.hasInstances and not label.ignoreInEval)
CATEGORIES = [
    {"id": i + 1, "name": label.name, "supercategory": label.category, "cityscapes_label_id": label.id}
    for i, label in enumerate(INSTANCE_LABELS)
]
_CATEGORY_OF_LABEL = {c["cityscapes_label_id"]: c["id"] for c in CATEGORIES}

CONVERSION_STYLES = ("default", "detectron")
_GT_SUFFIX = "_gtFine_instanceIds.png"
_IMAGE_SUFFIX = "_leftImg8bit.png"


def _outer_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Outer contours of a mask as COCO polygons, or None when some contour has < 3 points."""
    import cv2  # only polygon mode needs OpenCV

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = [contour.reshape(-1).astype(float).tolist() for contour in contours]
    if not polygons or min(len(p) for p in polygons) < 6:
        return None
    return polygons


def _detectron_annotation(mask: np.ndarray) -> dict | None:
    """Segmentation, area and box of one instance as Detectron's converter made them, or None
    where it dropped the instance (no contour, or a contour of at most 4 coordinates)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = [contour.reshape(-1).tolist() for contour in contours]
    if not polygons or min(len(p) for p in polygons) <= 4:
        return None
    x0 = min(min(p[0::2]) for p in polygons)
    x1 = max(max(p[0::2]) for p in polygons)
    y0 = min(min(p[1::2]) for p in polygons)
    y1 = max(max(p[1::2]) for p in polygons)
    return {
        "segmentation": polygons,
        "area": int(mask.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        "iscrowd": 0,
    }


def cityscapes_to_coco(
    root: str | os.PathLike,
    split: str,
    output: str | os.PathLike | None,
    segmentation: str = "rle",
    style: str = "default",
) -> dict:
    """Convert Cityscapes gtFine instance annotations of one split to a COCO instance file.

    Args:
        root: Cityscapes root, containing ``gtFine/<split>/<city>/*_gtFine_instanceIds.png`` (and
            usually ``leftImg8bit/<split>``; when that directory exists every GT must have its image).
        split: ``train``, ``val``, ``test``, ...
        output: where to write the JSON (atomically); None: only return it.
        segmentation: ``"rle"`` (exact masks) or ``"polygon"`` (outer contours); default style only.
        style: ``"default"`` or ``"detectron"`` (Detectron's conversion rules, module docstring).
    Returns:
        The COCO dict (images, annotations, categories), identical on every run.
    Raises:
        InputError: no such split, no GT files, a GT without its image or of another size than
            it, an unreadable GT PNG.
    """
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    if style not in CONVERSION_STYLES:
        raise ValueError(f"style must be one of {CONVERSION_STYLES}, got {style!r}")
    root = Path(root)
    gt_dir = root / layout.cityscapes_gt(split)
    if not gt_dir.is_dir():
        raise InputError(f"Cityscapes GT directory not found: {gt_dir}")
    entries = sorted(
        (f"{path.parent.name}/{path.name[: -len(_GT_SUFFIX)]}{_IMAGE_SUFFIX}", path)
        for path in gt_dir.glob(f"*/*{_GT_SUFFIX}")
    )
    if not entries:
        raise InputError(f"no *{_GT_SUFFIX} files in {gt_dir}/<city>/")
    image_dir = root / layout.cityscapes_images(split)
    if image_dir.is_dir():
        missing = [name for name, _ in entries if not (image_dir / name).is_file()]
        if missing:
            raise InputError(f"{len(missing)} GT file(s) in {gt_dir} have no image in {image_dir}, e.g. {missing[0]}")

    images, annotations = [], []
    bar = progress_bar(len(entries), f"cityscapes-to-coco {split}", "image", iterable=entries)
    for image_id, (file_name, gt_path) in enumerate(bar, start=1):
        try:
            with Image.open(gt_path) as png:
                instance_ids = np.asfortranarray(np.array(png, dtype=np.int32))
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read Cityscapes GT {gt_path}: {error}") from None
        if instance_ids.ndim != 2:
            raise InputError(f"{gt_path}: expected a single-channel instanceIds image, got shape {instance_ids.shape}")
        height, width = instance_ids.shape
        image_path = image_dir / file_name
        if image_path.is_file():
            with Image.open(image_path) as image:  # reads the header only
                if image.size != (width, height):
                    raise InputError(
                        f"{gt_path}: instanceIds is {width}x{height} but its image {image_path} is "
                        f"{image.size[0]}x{image.size[1]} (width x height): not its GT"
                    )
        images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for value in np.unique(instance_ids):
            label_id = int(value) // 1000 if value >= 1000 else int(value)
            category_id = _CATEGORY_OF_LABEL.get(label_id)
            if category_id is None:
                continue  # not one of the 8 evaluated instance classes (caravan, trailer, stuff)
            mask = instance_ids == value  # Fortran order, as pycocotools wants
            if style == "detectron":
                if value < 1000:
                    continue  # a group region: no instance id, not in Detectron's file
                annotation = _detectron_annotation(np.ascontiguousarray(mask))
                if annotation is not None:
                    annotations.append(
                        {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, **annotation}
                    )
                continue
            rle = mask_utils.encode(mask.view(np.uint8))
            is_crowd = value < 1000
            segm: object = compact_rle(rle)
            if segmentation == "polygon" and not is_crowd:
                polygons = _outer_polygons(np.ascontiguousarray(mask))
                segm = polygons if polygons is not None else segm
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": segm,
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(is_crowd),
                }
            )
    description = f"Cityscapes gtFine {split}: the 8 evaluated instance classes " + (
        f"({segmentation} masks, crowd regions as RLE)"
        if style == "default"
        else "as Detectron's tools/convert_cityscapes_to_coco.py converted them (external "
        "contours, no group regions, instances with a 1-2 pixel fragment dropped)"
    )
    coco = {
        "info": {"description": description, "style": style},
        "images": images,
        "annotations": annotations,
        "categories": copy.deepcopy(CATEGORIES),
    }
    if output is not None:
        atomic_write_json(output, coco, indent=None)
    return coco


def _stem(file_name: str) -> str:
    """``frankfurt/frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294``."""
    base = os.path.basename(file_name)
    base = base[: -len(_IMAGE_SUFFIX)] if base.endswith(_IMAGE_SUFFIX) else os.path.splitext(base)[0]
    return base


def _label_ids(gt: GroundTruth) -> dict[int, int]:
    """COCO category id -> Cityscapes label id (``cityscapes_label_id``, else by class name)."""
    from cityscapesscripts.helpers.labels import name2label

    mapping = {}
    for category_id, category in gt.categories.items():
        if "cityscapes_label_id" in category:
            mapping[category_id] = int(category["cityscapes_label_id"])
        elif category.get("name") in name2label and name2label[category["name"]].hasInstances:
            mapping[category_id] = name2label[category["name"]].id
    return mapping


def _detections_by_image(
    gt: GroundTruth, predictions: Sequence[Mapping]
) -> dict[int, list[tuple[int, float, Mapping]]]:
    """Each GT image's detections as (Cityscapes label id, score, RLE), in the records' order.

    Raises:
        InputError: a detection's category has no Cityscapes label id.
    """
    label_ids = _label_ids(gt)
    by_image: dict[int, list[tuple[int, float, Mapping]]] = {image_id: [] for image_id in gt.images}
    for index, det in enumerate(predictions):
        if det["category_id"] not in label_ids:
            name = gt.categories[det["category_id"]].get("name")
            raise InputError(
                f"record {index}: category {name!r} (id {det['category_id']}) has no Cityscapes "
                "label id (the GT categories need 'cityscapes_label_id' or Cityscapes class names)"
            )
        by_image[det["image_id"]].append((label_ids[det["category_id"]], float(det["score"]), det["segmentation"]))
    return by_image


def write_cityscapes_results(
    gt: GroundTruth, predictions: Sequence[Mapping], directory: str | os.PathLike
) -> list[str]:
    """Write predictions in cityscapesscripts' instance result format.

    Per GT image ``<stem>_pred.txt`` (one line per detection: mask PNG path relative to the
    file, Cityscapes label id, score) and the masks under ``masks/``.

    Args:
        gt: validated GT whose images are Cityscapes images.
        predictions: validated COCO records with RLE ``segmentation``.
        directory: output directory (created).
    Returns:
        The text files' absolute paths, in the order of ``gt.images``.
    Raises:
        InputError: a detection's category has no Cityscapes label id.
    """
    directory = Path(directory).resolve()
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    by_image = _detections_by_image(gt, predictions)
    paths = []
    for image_id, image in gt.images.items():
        stem = _stem(image.get("file_name", str(image_id)))
        lines = []
        for k, (label_id, score, rle) in enumerate(by_image[image_id]):
            mask_name = f"masks/{stem}_{k:04d}.png"
            Image.fromarray(mask_utils.decode(rle) * 255).save(directory / mask_name, compress_level=1)
            lines.append(f"{mask_name} {label_id} {score!r}\n")
        text_path = directory / f"{stem}_pred.txt"
        text_path.write_text("".join(lines))
        paths.append(str(text_path))
    return paths


def _write_dict_to_json(data: object, path: str) -> None:
    """cityscapesscripts' ``writeDict2JSON``, able to write numpy scalars (numpy 2 counts are
    numpy integers, which its JSON writer cannot serialise)."""
    with open(path, "w") as f:
        json.dump(
            data, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__, sort_keys=True, indent=4
        )


@contextlib.contextmanager
def _cityscapes_evaluation_module() -> Iterator[types.ModuleType]:
    """cityscapesscripts' instance evaluation module, made to run on numpy 2.4 while we use it:
    ``np.in1d`` (removed in numpy 2.4) is provided to it, and its JSON writer accepts numpy
    integers. Its computations are untouched."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as module

    originals = {"np": module.np, "writeDict2JSON": module.writeDict2JSON}
    if not hasattr(module.np, "in1d"):
        shim = types.ModuleType("numpy")
        shim.__dict__.update(module.np.__dict__)
        shim.in1d = lambda ar1, ar2, *args, **kwargs: np.isin(np.ravel(ar1), ar2, *args, **kwargs)
        module.np = shim
    module.writeDict2JSON = _write_dict_to_json
    try:
        yield module
    finally:
        for name, value in originals.items():
            setattr(module, name, value)


def _percent(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else 100.0 * value


def _evaluation_args(module: types.ModuleType) -> object:
    args = copy.copy(module.args)
    args.quiet, args.colorized, args.csv, args.JSONOutput = True, False, False, False
    module.setInstanceLabels(args)
    return args


def _match_image(task: tuple[str, list[tuple[int, float, Mapping]]]) -> tuple[str, dict]:
    """cityscapesscripts' ``matchGtWithPreds`` for one image: its GT instances (by its own
    ``instances2dict``) and the predictions (label id, score, RLE) assigned to them, with the
    pixel counts its ``assignGt2Preds`` takes from full-size arrays (a mask PNG per detection,
    compared with each GT instance of the class) counted on run-length encodings instead: the
    same integers, ~100x faster. A task of a worker process."""
    gt_file, detections = task
    with _cityscapes_evaluation_module() as module:
        args = _evaluation_args(module)
        key = os.path.abspath(gt_file)
        gt_by_label = module.filterGtInstances(module.instances2dict([gt_file], False)[key], args)
        gt_ids = np.asarray(module.readGTImage(gt_file, args))
        void_ids = [label.id for label in module.labels if label.ignoreInEval]
        id2label = module.id2label
        instance_labels = args.instLabels

    def encode(binary: np.ndarray) -> dict:
        return mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))

    void = encode(np.isin(gt_ids, void_ids))
    gt_rles = {name: [encode(gt_ids == gt["instID"]) for gt in instances] for name, instances in gt_by_label.items()}
    gt_instances = {name: [{**gt, "matchedPred": []} for gt in instances] for name, instances in gt_by_label.items()}
    predictions: dict[str, list[dict]] = {name: [] for name in instance_labels}

    def overlap(a: dict, b: dict) -> int:
        return int(mask_utils.area(mask_utils.merge([a, b], intersect=True)))

    for k, (label_id, score, rle) in enumerate(detections):
        name = id2label[int(label_id)].name
        pixels = int(mask_utils.area(rle))
        if name not in instance_labels or not pixels:
            continue
        # Fields and order as assignGt2Preds builds them; the name stands for a mask file.
        prediction = {
            "imgName": f"prediction{k}",
            "predID": sum(map(len, predictions.values())),
            "labelID": int(label_id),
            "pixelCount": pixels,
            "confidence": score,
            "voidIntersection": overlap(void, rle),
        }
        matched = []
        for number, gt in enumerate(gt_by_label[name]):
            intersection = overlap(gt_rles[name][number], rle)
            if intersection > 0:
                matched.append({**gt, "intersection": intersection})
                gt_instances[name][number]["matchedPred"].append({**prediction, "intersection": intersection})
        prediction["matchedGt"] = matched
        predictions[name].append(prediction)
    return key, {"groundTruth": gt_instances, "prediction": predictions}


def _map(function: object, tasks: Sequence, workers: int, desc: str) -> list:
    """``function`` over ``tasks`` in order, in ``workers`` processes (1: in this one), with a
    progress bar (:mod:`dcl.progress`) described by ``desc``."""
    with progress_bar(len(tasks), desc, "image") as bar:
        if workers <= 1 or len(tasks) <= 1:
            return [bar.update() or function(task) for task in tasks]
        # forkserver: workers start clean, never as forks of a process with threads (a training job's).
        context = multiprocessing.get_context("forkserver")
        chunk = max(1, len(tasks) // (4 * workers))  # a few chunks per worker: balanced, little overhead
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
            return [bar.update() or result for result in pool.map(function, tasks, chunksize=chunk)]


def cityscapes_instance_ap(
    gt: GroundTruth, predictions: Sequence[Mapping], root: str | os.PathLike, split: str = "val", workers: int = 1
) -> dict:
    """The official Cityscapes instance-level AP (and AP at 50% overlap), by cityscapesscripts.

    Args:
        gt: validated COCO GT of Cityscapes images (``file_name`` as in ``cityscapes_to_coco``).
        predictions: validated COCO records with RLE masks.
        root: Cityscapes root with ``gtFine/<split>``: the instanceIds PNGs are the GT evaluated.
        split: the split the GT file describes.
        workers: processes matching images in parallel (1: this process); the numbers do not
            depend on it.
    Returns:
        ``{"AP", "AP50", "per_class": {name: {"AP", "AP50"}}}`` in percent (None: no GT and no
        detection of that class).
    Raises:
        InputError: a GT image without its instanceIds PNG, a detection of a category without a
            Cityscapes label id, or cityscapesscripts refusing the input.
    """
    gt_dir = Path(root) / layout.cityscapes_gt(split)
    by_image = _detections_by_image(gt, predictions)
    tasks = []
    for image_id, image in gt.images.items():
        stem = _stem(image.get("file_name", ""))
        city = stem.split("_")[0]
        path = gt_dir / city / f"{stem}{_GT_SUFFIX}"
        if not path.is_file():
            raise InputError(f"image {image.get('file_name')!r} (id {image['id']}) has no Cityscapes GT {path}")
        tasks.append((str(path.resolve()), by_image[image_id]))
    matches = dict(_map(_match_image, tasks, workers, "Cityscapes AP"))  # in GT order, as evaluateImgLists builds it
    output = io.StringIO()
    with _cityscapes_evaluation_module() as module:
        args = _evaluation_args(module)
        try:
            with contextlib.redirect_stdout(output):
                scores = module.evaluateMatches(matches, args)
                averages = module.computeAverages(scores, args)
        except SystemExit:
            raise InputError(f"cityscapesscripts rejected the input: {output.getvalue().strip()}") from None
    return {
        "AP": _percent(averages["allAp"]),
        "AP50": _percent(averages["allAp50%"]),
        "per_class": {
            name: {"AP": _percent(values["ap"]), "AP50": _percent(values["ap50%"])}
            for name, values in averages["classes"].items()
        },
    }
