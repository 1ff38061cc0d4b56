"""Small synthetic COCO GT + detections for the evaluation and error-analysis tests.

Two parts: a hand-made image per case the analysis must get right (touching instances, a crowd
region, an unmatched detection, a class confusion, an exact IoU tie, GT without detections,
detections without non-crowd GT, overlapping GT, polygon / uncompressed / compressed RLE GT), and
random scenes for breadth. Images are small so dense reference implementations stay fast.

Also the helpers the tests share: the pycocotools reference statistics, their comparison, and
running ``python -m dcl``. Nothing here imports dcl: the references stay independent of it.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

__all__ = [
    "encode",
    "uncompressed",
    "rect",
    "box",
    "make_cases",
    "make_random",
    "merge_datasets",
    "coco_stats",
    "assert_stats_close",
    "run_dcl",
]

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
# COCOeval.summarize's 12 statistics, in its order (written out, not taken from dcl.data.coco).
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, zeros first)."""
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def rect(height: int, width: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Boolean mask with rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros((height, width), dtype=bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


class _Builder:
    def __init__(self):
        self.images, self.annotations, self.detections = [], [], []

    def image(self, height: int, width: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.png"})
        return image_id

    def gt(
        self,
        image_id: int,
        category: int,
        mask: np.ndarray,
        *,
        crowd: bool = False,
        form: str = "rle",
        polygon: list[float] | None = None,
    ) -> None:
        if form == "polygon":
            segmentation = [polygon]
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, *mask.shape))).astype(bool)
        elif form == "uncompressed" or crowd:
            segmentation = uncompressed(mask)
        else:
            segmentation = encode(mask)
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": box(mask),
                "iscrowd": int(crowd),
            }
        )

    def det(self, image_id: int, category: int, mask: np.ndarray, score: float, *, with_box: bool = True) -> None:
        record = {"image_id": image_id, "category_id": category, "segmentation": encode(mask), "score": score}
        if with_box:
            record["bbox"] = box(mask)
        self.detections.append(record)

    def dataset(self) -> tuple[dict, list[dict]]:
        return ({"images": self.images, "annotations": self.annotations, "categories": CATEGORIES}, self.detections)


def make_cases() -> tuple[dict, list[dict]]:
    """One image per case (see the module docstring); 20x24 pixels each."""
    b = _Builder()
    H, W = 20, 24
    # 1: touching instances of one class, a detection spanning both (foreground false positives),
    #    one shifted (background FP + FN), a crowd region with a detection on it.
    i = b.image(H, W)
    b.gt(i, 1, rect(H, W, 2, 2, 12, 8))
    b.gt(i, 1, rect(H, W, 2, 8, 12, 14), form="polygon", polygon=[8, 2, 14, 2, 14, 12, 8, 12])
    b.gt(i, 2, rect(H, W, 14, 16, 19, 23), crowd=True)
    b.det(i, 1, rect(H, W, 2, 2, 12, 11), 0.9)
    b.det(i, 1, rect(H, W, 4, 9, 14, 16), 0.8)
    b.det(i, 2, rect(H, W, 13, 15, 19, 22), 0.7)
    # 2: an unmatched detection (no GT of its class nearby) and a class confusion.
    i = b.image(H, W)
    b.gt(i, 1, rect(H, W, 1, 1, 9, 9))
    b.gt(i, 3, rect(H, W, 10, 12, 18, 22), form="uncompressed")
    b.det(i, 2, rect(H, W, 1, 1, 9, 8), 0.95)  # class confusion: same place, wrong class
    b.det(i, 1, rect(H, W, 12, 0, 19, 6), 0.6)  # matches nothing
    b.det(i, 3, rect(H, W, 9, 13, 18, 23), 0.85)
    # 3: an exact IoU tie between two GT of the same class: the later GT wins.
    i = b.image(H, W)
    b.gt(i, 2, rect(H, W, 5, 0, 15, 6))
    b.gt(i, 2, rect(H, W, 5, 10, 15, 16))
    b.det(i, 2, rect(H, W, 5, 4, 15, 12), 0.75)
    # 4: GT but no detections.
    i = b.image(H, W)
    b.gt(i, 1, rect(H, W, 3, 3, 10, 10))
    # 5: detections but only crowd GT (no non-crowd GT): left unchanged.
    i = b.image(H, W)
    b.gt(i, 3, rect(H, W, 0, 0, 10, 10), crowd=True)
    b.det(i, 3, rect(H, W, 2, 2, 12, 12), 0.5)
    # 6: no GT at all, one detection.
    i = b.image(H, W)
    b.det(i, 1, rect(H, W, 4, 4, 8, 8), 0.4)
    # 7: overlapping GT of different classes (COCO allows it); detections on the overlap.
    i = b.image(H, W)
    b.gt(i, 1, rect(H, W, 2, 2, 14, 14))
    b.gt(i, 3, rect(H, W, 8, 8, 18, 20))
    b.det(i, 1, rect(H, W, 3, 3, 16, 16), 0.65)
    b.det(i, 3, rect(H, W, 6, 6, 18, 21), 0.55, with_box=False)
    return b.dataset()


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    y0, x0 = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
    mask = rect(height, width, y0, x0, y0 + int(rng.integers(2, height // 2)), x0 + int(rng.integers(2, width // 2)))
    if rng.random() < 0.5:  # an L shape: boxes and masks disagree
        y1, x1 = int(rng.integers(0, height - 2)), int(rng.integers(0, width - 2))
        mask |= rect(height, width, y1, x1, y1 + 3, x1 + int(rng.integers(3, width // 2)))
    return mask


def make_random(seed: int, num_images: int = 12, height: int = 32, width: int = 40) -> tuple[dict, list[dict]]:
    """Random scenes: GT in all three encodings, jittered / merged / wrong-class / random detections."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    for _ in range(num_images):
        i = b.image(height, width)
        masks = []
        for _ in range(int(rng.integers(0, 6))):
            mask, category = _random_mask(rng, height, width), int(rng.integers(1, 4))
            form = str(rng.choice(["rle", "uncompressed", "rle"]))
            b.gt(i, category, mask, form=form, crowd=bool(rng.random() < 0.1))
            masks.append((mask, category))
        for mask, category in masks:
            for _ in range(int(rng.integers(0, 4))):
                dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
                det = np.roll(np.roll(mask, dy, 0), dx, 1)
                if masks and rng.random() < 0.3:
                    det = det | masks[int(rng.integers(len(masks)))][0]
                wrong = rng.random() < 0.15
                b.det(
                    i,
                    int(rng.integers(1, 4)) if wrong else category,
                    det,
                    float(rng.choice([0.5, round(float(rng.random()), 3)])),
                    with_box=bool(rng.random() < 0.7),
                )
        for _ in range(int(rng.integers(0, 3))):
            b.det(i, int(rng.integers(1, 4)), _random_mask(rng, height, width), round(float(rng.random()), 3))
    return b.dataset()


def merge_datasets(*datasets: tuple[dict, list[dict]]) -> tuple[dict, list[dict]]:
    """Concatenate datasets, renumbering image and annotation ids."""
    images, annotations, detections = [], [], []
    for gt, dets in datasets:
        image_offset, ann_offset = len(images), len(annotations)
        images += [dict(im, id=im["id"] + image_offset) for im in gt["images"]]
        annotations += [
            dict(a, id=a["id"] + ann_offset, image_id=a["image_id"] + image_offset) for a in gt["annotations"]
        ]
        detections += [dict(d, image_id=d["image_id"] + image_offset) for d in dets]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, detections


def coco_stats(api, results: list[dict], iou_type: str) -> dict:
    """pycocotools' COCOeval of ``results`` against the GT ``api`` (a ``COCO``): the 12
    statistics by name, in percent, None for -1."""
    evaluator = COCOeval(api, api.loadRes(results), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: None if value == -1 else 100 * value for name, value in zip(_STAT_NAMES, evaluator.stats)}


def assert_stats_close(actual: dict, expected: dict, tol: float = 1e-9) -> None:
    """Equal within ``tol`` (None exactly where expected is None); ``actual`` has the 12 names in order."""
    assert list(actual) == list(_STAT_NAMES)
    assert actual.keys() == expected.keys()
    for name in _STAT_NAMES:
        if expected[name] is None:
            assert actual[name] is None, name
        else:
            assert actual[name] == pytest.approx(expected[name], abs=tol), name


def run_dcl(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m dcl ARGS`` (each str()-ed) in a subprocess, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "dcl", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_nested_close(actual, expected, rtol, atol=0.0, where="results"):
    """Same keys and lengths, floats equal to ``rtol`` / ``atol`` (NaN equals NaN), the rest equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            assert_nested_close(actual[key], expected[key], rtol, atol, f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_nested_close(a, e, rtol, atol, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rtol, abs=atol, nan_ok=True), f"{where}: {actual} vs {expected}"
    else:  # None (NaN in JSON), strings, integers
        assert actual == expected, f"{where}: {actual} vs {expected}"


def default_sigint() -> None:
    """A ``preexec_fn``: SIGINT back to its default in the child, so Python there turns Ctrl-C into
    ``KeyboardInterrupt`` even when this test run was started in the background (a shell's ``&``
    ignores SIGINT, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
