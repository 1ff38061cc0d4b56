"""Benchmark the official Cityscapes AP (``dcl evaluate --cityscapes-root``): 1 worker vs N.

    .venv/bin/python benchmarks/bench_cityscapes_ap.py            # 24 images, a few minutes
    .venv/bin/python benchmarks/bench_cityscapes_ap.py --full     # Cityscapes val: 500 images

Writes a synthetic Cityscapes val set (``synthetic_instances.py`` scenes at 1024x2048: GT
instanceIds PNGs and the COCO GT file, 100 detections per image) to a temporary directory, then
times :func:`dcl.data.cityscapes.cityscapes_instance_ap` with 1 worker (before) and N workers (after;
default one per usable CPU) and, unless ``--no-files``, the previous implementation: one PNG per
detection and cityscapesscripts' ``evaluateImgLists`` on the files. Prints seconds, ratios and
whether the APs are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from synthetic_instances import make_dataset  # the script's directory is sys.path[0]

CITIES = ("frankfurt", "lindau", "munster")  # Cityscapes val's cities


def write_cityscapes(root: Path, images: int, height: int, width: int, detections: int, seed: int = 0):
    """A Cityscapes-layout val set: ``gtFine/val/<city>/*_gtFine_instanceIds.png`` and the COCO GT
    of the same instances (``cityscapes_to_coco``), plus COCO predictions on it."""
    from dcl.data.cityscapes import cityscapes_to_coco
    from dcl.data.coco import load_ground_truth, load_predictions

    gt_per_image = max(1, detections // 10)
    coco, predictions = make_dataset(
        images,
        height,
        width,
        seed=seed,
        gt_per_image=(gt_per_image, gt_per_image + 1),
        dets_per_gt=(9, 10),
        false_positives=(detections - 9 * gt_per_image, detections - 9 * gt_per_image + 1),
        max_dets=detections,
    )
    names = {}
    for image in coco["images"]:
        city = CITIES[image["id"] % len(CITIES)]
        names[image["id"]] = f"{city}_000000_{image['id']:06d}"
    label_of = {category["id"]: _label_id(category["name"]) for category in coco["categories"]}
    for image in coco["images"]:
        ids = np.zeros((height, width), np.uint16)  # unlabeled
        for k, annotation in enumerate(a for a in coco["annotations"] if a["image_id"] == image["id"]):
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):
                segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            label = label_of[annotation["category_id"]]
            ids[mask_utils.decode(segmentation).astype(bool)] = label if annotation["iscrowd"] else label * 1000 + k
        stem = names[image["id"]]
        folder = root / "gtFine" / "val" / stem.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(folder / f"{stem}_gtFine_instanceIds.png")
    gt_coco = cityscapes_to_coco(root, "val", None)  # images sorted by path, ids 1..N
    new_id = {image["file_name"].split("/")[1][: -len("_leftImg8bit.png")]: image["id"] for image in gt_coco["images"]}
    for prediction in predictions:
        prediction["image_id"] = new_id[names[prediction["image_id"]]]
        prediction["category_id"] = {c["cityscapes_label_id"]: c["id"] for c in gt_coco["categories"]}[
            label_of[prediction["category_id"]]
        ]
    gt = load_ground_truth(gt_coco)
    return gt, load_predictions(predictions, gt)


def _label_id(name: str) -> int:
    from cityscapesscripts.helpers.labels import name2label

    return name2label[name].id


def previous_implementation(gt, predictions, root: Path) -> float:
    """The AP as computed before worker processes: a PNG per detection, then evaluateImgLists."""
    from dcl.data import cityscapes

    gt_files = []
    for image in gt.images.values():
        stem = cityscapes._stem(image["file_name"])
        gt_files.append(str(root / "gtFine" / "val" / stem.split("_")[0] / f"{stem}_gtFine_instanceIds.png"))
    with (
        tempfile.TemporaryDirectory(prefix="bench-cityscapes-") as tmp,
        cityscapes._cityscapes_evaluation_module() as m,
    ):
        files = cityscapes.write_cityscapes_results(gt, predictions, Path(tmp) / "results")
        args = copy.copy(m.args)
        args.predictionPath, args.predictionWalk = str(Path(tmp) / "results"), None
        args.gtInstancesFile, args.exportFile = str(Path(tmp) / "gt.json"), str(Path(tmp) / "result.json")
        args.JSONOutput, args.quiet, args.colorized, args.csv = False, True, False, False
        previous = os.getcwd()
        os.chdir(tmp)  # it writes matches.json to the working directory
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return 100 * m.evaluateImgLists(files, gt_files, args)["averages"]["allAp"]
        finally:
            os.chdir(previous)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from dcl.data.cityscapes import cityscapes_instance_ap
    from dcl.evaluation.evaluate import usable_cpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="Cityscapes val size: 500 images of 1024x2048")
    parser.add_argument("--images", type=int, default=24, help="images (default: %(default)s; --full: 500)")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--detections", type=int, default=100, help="per image (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=usable_cpus(), help="N (default: the usable CPUs, %(default)s)")
    parser.add_argument("--no-files", action="store_true", help="skip the previous, PNG-file implementation")
    args = parser.parse_args(argv)
    images = 500 if args.full else args.images
    with tempfile.TemporaryDirectory(prefix="bench-cityscapes-root-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        gt, predictions = write_cityscapes(root, images, args.height, args.width, args.detections)
        print(
            f"data: {images} images of {args.height}x{args.width}, {len(gt.data['annotations'])} GT, "
            f"{len(predictions)} detections ({time.perf_counter() - start:.0f} s to make)",
            flush=True,
        )
        one, one_s = timed(cityscapes_instance_ap, gt, predictions, root, "val", 1)
        print(f"before (1 worker): {one_s:.1f} s  AP {one['AP']:.4f}", flush=True)
        many, many_s = timed(cityscapes_instance_ap, gt, predictions, root, "val", args.workers)
        print(f"after ({args.workers} workers): {many_s:.1f} s  AP {many['AP']:.4f}", flush=True)
        print(f"ratio 1 worker / {args.workers} workers: {one_s / many_s:.2f}x  identical: {one == many}")
        if not args.no_files:
            ap, files_s = timed(previous_implementation, gt, predictions, root)
            print(f"previous (a PNG per detection, 1 process): {files_s:.1f} s  AP {ap:.4f}")
            print(
                f"ratio previous / {args.workers} workers: {files_s / many_s:.2f}x  "
                f"identical: {abs(ap - one['AP']) < 1e-9}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
