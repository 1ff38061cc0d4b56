"""Synthetic COCO GT + detections with every kind of segmentation error, for the benchmarks.

Cityscapes-like scenes: elliptical instances of 8 classes, some touching or overlapping, a crowd
region now and then; GT as polygons (most) or RLE. Detections are perturbed copies of the GT
(shifted, scaled, rotated: background false positives and false negatives; reaching into
neighbours: foreground false positives), some with the wrong class, plus false positives that
match nothing. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["CATEGORIES", "make_dataset", "write_dataset", "pin_to_one_cpu"]

CATEGORIES = [
    {"id": i + 1, "name": name}
    for i, name in enumerate(["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"])
]


class _Canvas:
    """Rasterises ellipses into one reused full-size Fortran buffer (what pycocotools encodes)."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.buffer = np.zeros((height, width), dtype=np.uint8, order="F")

    def ellipse_rle(self, cx: float, cy: float, a: float, b: float, theta: float) -> dict:
        r = max(a, b)
        x0, x1 = max(0, int(cx - r)), min(self.width, int(cx + r) + 2)
        y0, y1 = max(0, int(cy - r)), min(self.height, int(cy + r) + 2)
        if x0 < x1 and y0 < y1:
            ys, xs = np.mgrid[y0:y1, x0:x1]
            dx, dy = xs - cx, ys - cy
            c, s = math.cos(theta), math.sin(theta)
            u, v = (dx * c + dy * s) / max(a, 1e-6), (-dx * s + dy * c) / max(b, 1e-6)
            self.buffer[y0:y1, x0:x1] = (u * u + v * v) <= 1.0
        rle = mask_utils.encode(self.buffer)
        self.buffer[y0:y1, x0:x1] = 0
        rle["counts"] = rle["counts"].decode("ascii")
        return rle


def _ellipse_polygon(cx: float, cy: float, a: float, b: float, theta: float, points: int = 32) -> list[float]:
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    x = cx + a * np.cos(t) * math.cos(theta) - b * np.sin(t) * math.sin(theta)
    y = cy + a * np.cos(t) * math.sin(theta) + b * np.sin(t) * math.cos(theta)
    return np.stack([x, y], axis=1).ravel().round(2).tolist()


def make_dataset(
    num_images: int = 20,
    height: int = 1024,
    width: int = 2048,
    *,
    seed: int = 0,
    gt_per_image: tuple[int, int] = (1, 10),
    dets_per_gt: tuple[int, int] = (2, 10),
    false_positives: tuple[int, int] = (0, 16),
    max_dets: int = 100,
) -> tuple[dict, list[dict]]:
    """A COCO GT dict and a COCO results list (masks as compressed RLE, boxes from the masks).

    Ranges are [low, high) per image / per GT; defaults give about 106 GT and 740 detections on
    20 images of 1024x2048.
    """
    rng = np.random.default_rng(seed)
    canvas = _Canvas(height, width)
    scale = min(height, width) / 1024
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"synthetic_{image_id:06d}.png", "height": height, "width": width})
        shapes = []
        for _ in range(int(rng.integers(*gt_per_image))):
            a, b = rng.uniform(20, 220) * scale, rng.uniform(20, 160) * scale
            if shapes and rng.random() < 0.5:  # touch or overlap the previous instance
                px, py, pa, pb, _, _ = shapes[-1]
                angle = rng.uniform(0, 2 * math.pi)
                distance = (max(pa, pb) + max(a, b)) * rng.uniform(0.6, 1.0)
                cx, cy = px + distance * math.cos(angle), py + distance * math.sin(angle)
            else:
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            cx, cy = float(np.clip(cx, 0, width - 1)), float(np.clip(cy, 0, height - 1))
            theta = rng.uniform(0, math.pi)
            category = int(rng.integers(1, len(CATEGORIES) + 1))
            shapes.append((cx, cy, a, b, theta, category))
            rle = canvas.ellipse_rle(cx, cy, a, b, theta)
            if rng.random() < 0.8:
                segmentation = [_ellipse_polygon(cx, cy, a, b, theta)]
                polygon_rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                area, box = float(mask_utils.area(polygon_rle)), mask_utils.toBbox(polygon_rle).tolist()
            else:
                segmentation = rle
                area, box = float(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": box,
                    "iscrowd": 0,
                }
            )
        if rng.random() < 0.3:  # a crowd region
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rle = canvas.ellipse_rle(cx, cy, 150 * scale, 80 * scale, 0.0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, len(CATEGORIES) + 1)),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 1,
                }
            )
        image_dets = []
        for cx, cy, a, b, theta, category in shapes:
            for _ in range(int(rng.integers(*dets_per_gt))):
                shift = rng.normal(0, 0.15, 2) * (a + b) / 2
                params = (
                    cx + shift[0],
                    cy + shift[1],
                    a * rng.uniform(0.7, 1.3),
                    b * rng.uniform(0.7, 1.3),
                    theta + rng.normal(0, 0.2),
                )
                wrong_class = rng.random() < 0.15
                image_dets.append((params, int(rng.integers(1, len(CATEGORIES) + 1)) if wrong_class else category))
        for _ in range(int(rng.integers(*false_positives))):
            params = (
                rng.uniform(0, width),
                rng.uniform(0, height),
                rng.uniform(10, 150) * scale,
                rng.uniform(10, 100) * scale,
                rng.uniform(0, math.pi),
            )
            image_dets.append((params, int(rng.integers(1, len(CATEGORIES) + 1))))
        for params, category in image_dets[:max_dets]:
            rle = canvas.ellipse_rle(*params)
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "score": round(float(rng.uniform(0.05, 1.0)), 4),
                }
            )
    gt = {
        "info": {"description": f"synthetic instances (seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    return gt, detections


def write_dataset(gt_path: Path, pred_path: Path, **kwargs) -> tuple[dict, list[dict]]:
    """``make_dataset(**kwargs)`` written to ``gt_path`` and ``pred_path`` as JSON; returns both."""
    gt, predictions = make_dataset(**kwargs)
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(predictions))
    return gt, predictions


def pin_to_one_cpu() -> None:
    """Run this process on one CPU (where the OS allows it), so timings are single-core ones."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
