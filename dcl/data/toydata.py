"""Synthetic instance-segmentation datasets in COCO and Cityscapes format (``dcl data toy``).

The toy datasets let the whole pipeline (training, COCO and Cityscapes evaluation, the fFP/bFP/FN
error analysis) run on a laptop. Every image is a small scene: a textured background and several
objects whose class shows in both shape and colour, so a small Mask R-CNN learns them within a few
hundred CPU iterations. Objects are painted back to front; many touch or overlap, and the visible
mask of an occluded object excludes its occluders (so foreground false positives are possible).
About a quarter of the images hold a crowd region (a patch of many small same-class objects),
annotated as ``iscrowd`` (COCO) or as a ``<class>group`` polygon (Cityscapes). In about a third of
the Cityscapes images a pole stands in front of an instance one or two pixels from its edge, so
that instance's visible mask has a separate 1-2 pixel fragment, as real occluders leave them (the
case Detectron's Cityscapes conversion drops whole).

Layout under ``DIR`` (``H x W`` is ``--size``; Cityscapes images are ``H x 2H``, the 1:2 aspect of
the real ones):

* ``coco/{train,val}/<id:012d>.jpg``, ``coco/annotations/instances_{train,val}.json``:
  3 categories (ids 1..3), image ids 1..N, annotation ids 1..M in image order, polygon
  segmentations that trace the visible pixels exactly (pixel-edge outlines: pycocotools rasterises
  them back to the same pixels), ``area`` = visible pixels, ``bbox`` XYWH, crowd regions as
  uncompressed RLE with ``iscrowd: 1``. ``coco/annotations/instances_occ_val.json``: the toy
  COCO-OCC, the val images in which two instances' boxes overlap by >= 0.2 of the smaller one,
  renumbered 1..K (``dcl.data.coco.occlusion_subset``).
* ``cityscapes/leftImg8bit/{train,val}/<city>/<city>_000000_<frame:06d>_leftImg8bit.png`` and
  ``cityscapes/gtFine/{train,val}/<city>/<city>_000000_<frame:06d>_gtFine_{polygons.json,
  instanceIds.png,labelIds.png,color.png}`` with the real Cityscapes label ids (the 8 instance
  classes plus sky, building, road and pole as background). As in the real dataset, the polygons are
  whole (amodal) outlines in drawing order and the PNGs are rendered from them by
  cityscapesscripts' own ``json2instanceImg``/``json2labelImg`` code, so instance ids are
  ``label_id * 1000 + k`` for instances and the plain label id for group (crowd) regions.
* ``cityscapes/annotations/instancesonly_filtered_gtFine_{train,val}.json`` (COCO JSON by
  ``dcl.data.cityscapes.cityscapes_to_coco``) and ``instancesonly_filtered_gtFine_val.detectron.json`` (Detectron's conversion rules, the
  original error analysis' GT).
* ``.dcl-toy.json``: the marker (generator version, arguments, counts). Re-running into a
  directory that has it regenerates the data (byte-identical for the same arguments); a non-empty
  directory without it is refused and left untouched.

Image ``k`` of a split depends only on ``(seed, dataset, split, k)``, so a larger ``--num-train``
adds images without changing the first ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

from dcl.data import cityscapes
from dcl import layout
from dcl.data.coco import rle_counts
from dcl.io import InputError, atomic_write_json, read_json

__all__ = [
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "DEFAULT_SIZE",
    "ToyClass",
    "SHAPE_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_CITIES",
    "parse_size",
    "mask_outlines",
    "generate_toy_datasets",
]

logger = logging.getLogger(__name__)

# Bump when the output for the same arguments changes.
GENERATOR_VERSION = 2
MARKER_NAME = ".dcl-toy.json"
MARKER_GENERATOR = "dcl.data.toydata"
DEFAULT_SIZE = (128, 128)
OCCLUSION_MIN_OVERLAP = 0.2  # of the toy COCO-OCC (layout.TOY_OCCLUSION_SUBSET)
_TMP_PREFIX = ".dcl-toy-tmp-"
TOY_COCO, TOY_CITYSCAPES = layout.DATASET_SPECS["toy_coco"], layout.DATASET_SPECS["toy_cityscapes"]
_DATASET_KEYS = {"coco": 0, "cityscapes": 1}  # in the seed of every image: fixed, whatever the folder names
CITYSCAPES_CITIES = {"train": "toytown", "val": "toyville"}


@dataclass(frozen=True)
class ToyClass:
    """One object class: its dataset name and id, and how its objects look in the images."""

    name: str
    dataset_id: int  # COCO category id, or Cityscapes label id
    shape: str  # key of _UNIT_SHAPES
    colour: tuple[int, int, int]  # RGB in the images (not the Cityscapes label colour)
    aspect: tuple[float, float]  # range of width / height


# The toy COCO's classes (its category ids 1..3).
SHAPE_CLASSES: tuple[ToyClass, ...] = (
    ToyClass("disc", 1, "ellipse", (215, 45, 45), (0.75, 1.33)),
    ToyClass("triangle", 2, "triangle", (40, 175, 60), (0.85, 1.2)),
    ToyClass("square", 3, "rectangle", (45, 85, 220), (0.8, 1.25)),
)

# Shape, image colour and aspect per Cityscapes instance class; names and ids are the evaluated
# instance classes of dcl.data.cityscapes, in its order (= detectron2's contiguous ids 0..7).
_CITYSCAPES_LOOKS = {
    "person": ("ellipse", (220, 30, 60), (0.45, 0.6)),
    "rider": ("diamond", (255, 140, 0), (0.6, 0.8)),
    "car": ("rectangle", (30, 60, 230), (1.6, 2.0)),
    "truck": ("lshape", (0, 170, 170), (1.3, 1.6)),
    "bus": ("hexagon", (240, 220, 20), (1.8, 2.2)),
    "train": ("parallelogram", (150, 40, 210), (2.2, 2.8)),
    "motorcycle": ("triangle", (40, 200, 40), (1.0, 1.3)),
    "bicycle": ("cross", (240, 60, 240), (0.9, 1.1)),
}
CITYSCAPES_CLASSES: tuple[ToyClass, ...] = tuple(
    ToyClass(label.name, label.id, *_CITYSCAPES_LOOKS[label.name]) for label in cityscapes.INSTANCE_LABELS
)

_ARM = 0.36
_UNIT_SHAPES: dict[str, np.ndarray] = {
    "ellipse": np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 28, endpoint=False)), np.sin(t)], 1),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], float),
    "rectangle": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float),
    "diamond": np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], float),
    "hexagon": np.stack([np.cos(t := np.arange(6) * np.pi / 3), np.sin(t)], 1),
    "parallelogram": np.array([(-0.5, -1), (1, -1), (0.5, 1), (-1, 1)], float),
    "lshape": np.array([(-1, -1), (0.2, -1), (0.2, -0.25), (1, -0.25), (1, 1), (-1, 1)], float),
    "cross": np.array(
        [
            (-_ARM, -1),
            (_ARM, -1),
            (_ARM, -_ARM),
            (1, -_ARM),
            (1, _ARM),
            (_ARM, _ARM),
            (_ARM, 1),
            (-_ARM, 1),
            (-_ARM, _ARM),
            (-1, _ARM),
            (-1, -_ARM),
            (-_ARM, -_ARM),
        ],
        float,
    ),
}


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``; both sides 64..2048 pixels (smaller scenes cannot hold objects that
    Cityscapes' evaluation counts, >= 100 pixels)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"size must be HEIGHTxWIDTH, e.g. 128x128, not {text!r}")
    height, width = int(match.group(1)), int(match.group(2))
    if not (64 <= height <= 2048 and 64 <= width <= 2048):
        raise ValueError(f"size {height}x{width}: height and width must be within 64..2048 pixels")
    return height, width


# ----------------------------------------------------------------------------------------------
# Mask outlines


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit pixel edges between foreground and background of a (H, W) mask, each walked with
    the foreground on its right (screen coordinates, y down).

    Returns:
        ``(x, y, code)``: (E,) int arrays of each edge's start corner and direction code, 0..3 =
        +x, +y, -x, -y (top, right, bottom, left edges of a pixel), so ``(code + 1) % 4`` is a
        right turn; grouped by code, each group in row-major pixel order.
    """
    m = np.pad(np.asarray(mask).astype(bool), 1)
    inner = m[1:-1, 1:-1]
    xs, ys, codes = [], [], []
    for code, (sides, (dx, dy)) in enumerate(
        (
            (inner & ~m[:-2, 1:-1], (0, 0)),  # top edge, from the pixel's top-left corner
            (inner & ~m[1:-1, 2:], (1, 0)),  # right edge, from its top-right corner
            (inner & ~m[2:, 1:-1], (1, 1)),  # bottom edge, from its bottom-right corner
            (inner & ~m[1:-1, :-2], (0, 1)),  # left edge, from its bottom-left corner
        )
    ):
        rows, cols = np.nonzero(sides)
        xs.append(cols + dx)
        ys.append(rows + dy)
        codes.append(np.full(len(rows), code))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(codes)


def _link_edges(
    x: np.ndarray, y: np.ndarray, code: np.ndarray, stride: int
) -> tuple[np.ndarray, list[int], list[bool], list[int], list[int]]:
    """Chain the (E,) boundary edges of ``_boundary_edges`` into outlines: for each edge, the edge
    that leaves its end corner. ``stride`` is the mask's width + 1 (corners per row).

    Returns:
        ``(order, following, is_corner, corner_x, corner_y)``: (E,) edge indices sorted by start
        corner then code; per edge, the next edge's index, whether the outline turns at its end
        corner, and that corner's x and y.
    """
    end_x = x + np.array([1, 0, -1, 0])[code]
    end_y = y + np.array([0, 1, 0, -1])[code]
    order = np.argsort((y * stride + x) * 4 + code, kind="stable")
    sorted_keys = ((y * stride + x) * 4 + code)[order]
    end_vertex = end_y * stride + end_x
    first = np.searchsorted(sorted_keys, end_vertex * 4)
    last = np.searchsorted(sorted_keys, end_vertex * 4 + 4)
    # Where two edges leave a vertex (a saddle: pixels touching diagonally) take the right turn,
    # which keeps to the pixel being walked around, so diagonal neighbours get separate outlines.
    position = np.where(last - first == 1, first, np.searchsorted(sorted_keys, end_vertex * 4 + (code + 1) % 4))
    following = order[position].tolist()
    is_corner = (code[order[position]] != code).tolist()
    return order, following, is_corner, end_x.tolist(), end_y.tolist()


def _trace_outlines(
    order: np.ndarray, following: list[int], is_corner: list[bool], corner_x: list[int], corner_y: list[int]
) -> tuple[list[list[int]], list[list[int]]]:
    """Walk the linked edges of ``_link_edges`` into closed flat polygons of their corners, each
    from its first edge in ``order``; those of positive shoelace area are outer outlines, the
    others holes. Returns ``(outers, holes)``."""
    outers: list[list[int]] = []
    holes: list[list[int]] = []
    visited = [False] * len(following)
    for start in order.tolist():
        if visited[start]:
            continue
        polygon: list[int] = []
        edge = start
        while not visited[edge]:
            visited[edge] = True
            if is_corner[edge]:
                polygon += (corner_x[edge], corner_y[edge])
            edge = following[edge]
        px, py = polygon[0::2], polygon[1::2]
        twice_area = sum(a * d - b * c for a, b, c, d in zip(px, py, px[1:] + px[:1], py[1:] + py[:1]))
        (outers if twice_area > 0 else holes).append(polygon)
    return outers, holes


def mask_outlines(mask: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Outlines of a binary mask along pixel edges.

    Vertices are pixel corners (pixel ``(row r, col c)`` spans ``x in [c, c+1]``, ``y in [r, r+1]``),
    so each outline encloses exactly its pixels: pycocotools rasterises an outer outline back to
    the same pixels, and the shoelace areas (outer positive, holes negative) sum to the pixel count.
    Pixels that touch only diagonally belong to different outlines (4-connectivity).

    Args:
        mask: array of shape (H, W), nonzero = foreground.

    Returns:
        ``(outers, holes)``: lists of COCO-style flat polygons ``[x0, y0, x1, y1, ...]``, one outer
        outline per 4-connected component and one hole outline per enclosed background region;
        collinear vertices are dropped.
    """
    x, y, code = _boundary_edges(mask)
    if not len(x):
        return [], []
    stride = np.asarray(mask).shape[1] + 1
    return _trace_outlines(*_link_edges(x, y, code, stride))


# ----------------------------------------------------------------------------------------------
# Scenes


@dataclass
class _Object:
    """One polygon of a scene, in drawing order (later ones cover earlier ones)."""

    kind: str  # "stuff" (Cityscapes background), "instance" or "group" (crowd region)
    label: str  # Cityscapes label name or COCO category name
    class_index: int  # index into the class list (-1 for stuff)
    polygon: np.ndarray  # (K, 2) int, x y
    full_area: int = 0  # pixels of the polygon alone
    look: dict[str, Any] = field(default_factory=dict)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive pixel coordinates."""
        x0, y0 = self.polygon.min(0)
        x1, y1 = self.polygon.max(0)
        return int(x0), int(y0), int(x1), int(y1)


@dataclass
class _SceneSpec:
    height: int
    width: int
    classes: tuple[ToyClass, ...]
    num_instances: tuple[int, int]  # inclusive range
    size_range: tuple[float, float]  # sqrt(area) of an object, in pixels
    min_visible_pixels: int
    y_range: tuple[float, float]  # allowed object centres, as fractions of the height
    max_rotation_deg: float


def _paint(height: int, width: int, objects: list[_Object]) -> np.ndarray:
    """(H, W) int32 map of the topmost object at each pixel (index + 1; 0 = none).

    Rasterised with PIL's ``ImageDraw.polygon``, the rasteriser cityscapesscripts uses to render
    the Cityscapes PNGs from the polygons, so the two agree pixel for pixel.
    """
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, obj in enumerate(objects):
        draw.polygon([tuple(p) for p in obj.polygon.tolist()], fill=index + 1)
    return np.asarray(canvas, dtype=np.int32)


def _shape_polygon(shape: str, cx: float, cy: float, width: float, height: float, angle: float) -> np.ndarray | None:
    """Integer (K, 2) polygon of a unit shape scaled to ``width x height``, rotated by ``angle``
    (radians) about its centre; None if rounding left fewer than 3 distinct corners."""
    points = _UNIT_SHAPES[shape] * (width / 2, height / 2)
    cos, sin = math.cos(angle), math.sin(angle)
    points = points @ np.array([[cos, sin], [-sin, cos]]) + (cx, cy)
    points = np.rint(points).astype(np.int64)
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep]
    return points if len(np.unique(points, axis=0)) >= 3 else None


def _visible_ok(ids: np.ndarray, index: int, obj: _Object, spec: _SceneSpec) -> bool:
    """An object stays in the scene if most of it shows and (for instances) what shows is one
    piece without holes, which a single COCO polygon represents exactly."""
    x0, y0, x1, y1 = obj.bbox
    visible = ids[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] == index + 1
    area = int(visible.sum())
    if area < spec.min_visible_pixels or area < 0.5 * obj.full_area:
        return False
    if obj.kind == "instance":
        outers, holes = mask_outlines(visible)
        return len(outers) == 1 and not holes
    return True


def _overlaps(a: _Object, b: _Object) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return ax0 <= bx1 and bx0 <= ax1 and ay0 <= by1 and by0 <= ay1


def _draw_extent(
    rng: np.random.Generator, kind: str, toy_class: ToyClass, spec: _SceneSpec
) -> tuple[float, float, str, float]:
    """Width, height, shape and rotation (radians) of a new object: a crowd region ("group") is a
    large upright ellipse, an instance its class's shape and aspect, at a random angle."""
    if kind == "group":
        size = rng.uniform(1.6, 2.0) * spec.size_range[1]
        aspect = rng.uniform(1.2, 1.8)
        shape, angle = "ellipse", 0.0
    else:
        size = rng.uniform(*spec.size_range)
        aspect = rng.uniform(*toy_class.aspect)
        shape = toy_class.shape
        angle = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    return size * math.sqrt(aspect), size / math.sqrt(aspect), shape, angle


def _draw_centre(
    rng: np.random.Generator, spec: _SceneSpec, objects: list[_Object], kind: str, obj_w: float, obj_h: float
) -> tuple[float, float]:
    """Centre (x, y) of a new ``obj_w`` x ``obj_h`` object: for an instance, half the time next
    to an earlier instance, else anywhere in the spec's band of the image."""
    instances = [o for o in objects if o.kind == "instance"]
    if kind == "instance" and instances and rng.random() < 0.5:
        # Against an earlier instance: centres about one mean object size apart, so the
        # two touch or overlap.
        anchor = instances[int(rng.integers(len(instances)))]
        ax0, ay0, ax1, ay1 = anchor.bbox
        reach = (math.hypot(ax1 - ax0, ay1 - ay0) + math.hypot(obj_w, obj_h)) / 4
        theta = rng.uniform(0, 2 * math.pi)
        distance = reach * rng.uniform(0.7, 1.15)
        return (ax0 + ax1) / 2 + distance * math.cos(theta), (ay0 + ay1) / 2 + distance * math.sin(theta)
    return rng.uniform(0, spec.width), rng.uniform(spec.y_range[0], spec.y_range[1]) * spec.height


def _inside(polygon: np.ndarray | None, height: int, width: int) -> bool:
    """Whether a (K, 2) x y polygon exists and lies within the ``width`` x ``height`` image."""
    return not (
        polygon is None or polygon.min() < 0 or polygon[:, 0].max() > width - 1 or polygon[:, 1].max() > height - 1
    )


def _place_objects(
    rng: np.random.Generator, spec: _SceneSpec, background: list[_Object], first_class: int
) -> tuple[list[_Object], np.ndarray]:
    """Objects drawn over ``background``, back to front: an optional crowd region, then
    instances, about half of them placed against an earlier one so they touch or overlap.
    Returns them and their ``_paint`` map."""
    height, width = spec.height, spec.width
    objects = list(background)
    objects_ids = _paint(height, width, objects)
    num_instances = int(rng.integers(spec.num_instances[0], spec.num_instances[1] + 1))
    kinds = (["group"] if rng.random() < 0.3 else []) + ["instance"] * num_instances
    for order, kind in enumerate(kinds):
        # Every image holds its index's class (mod the class count), so with at least as many
        # images as classes every class appears in every split.
        guaranteed = order == kinds.index("instance")
        class_index = first_class if guaranteed else int(rng.integers(len(spec.classes)))
        toy_class = spec.classes[class_index]
        for _attempt in range(100 if guaranteed else 25):
            obj_w, obj_h, shape, angle = _draw_extent(rng, kind, toy_class, spec)
            cx, cy = _draw_centre(rng, spec, objects, kind, obj_w, obj_h)
            polygon = _shape_polygon(shape, cx, cy, obj_w, obj_h, angle)
            if not _inside(polygon, height, width):
                continue
            candidate = _Object(kind, toy_class.name, class_index, polygon)
            alone = _paint(height, width, [candidate]) > 0
            candidate.full_area = int(alone.sum())
            trial = objects + [candidate]
            # The candidate is painted last and a polygon's fill ignores what is below it, so
            # this equals _paint(height, width, trial).
            ids = np.where(alone, np.int32(len(trial)), objects_ids)
            affected = [i for i, o in enumerate(trial) if o.kind != "stuff" and _overlaps(o, candidate)]
            if all(_visible_ok(ids, i, trial[i], spec) for i in affected):
                objects, objects_ids = trial, ids
                break
    return objects, objects_ids


# ----------------------------------------------------------------------------------------------
# Appearance


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, sigma: float) -> np.ndarray:
    """(H, W, 3) float32 low-frequency colour noise with values around 0."""
    coarse = np.clip(128 + rng.normal(0, sigma, (cells, cells, 3)), 0, 255).astype(np.uint8)
    fine = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(fine, dtype=np.float32) - 128


def _clutter(rng: np.random.Generator, image: np.ndarray, region: np.ndarray | None = None) -> None:
    """Grey lines and blobs (no class colours): texture the model must learn to ignore."""
    height, width = image.shape[:2]
    layer = Image.new("L", (width, height), 0)
    colours = []
    draw = ImageDraw.Draw(layer)
    for k in range(int(rng.integers(3, 9))):
        x0, x1 = rng.uniform(0, width, 2)
        y0, y1 = rng.uniform(0, height, 2)
        draw.line([(x0, y0), (x1, y1)], fill=k + 1, width=int(rng.integers(1, 4)))
        colours.append(rng.uniform(40, 210) + rng.uniform(-12, 12, 3))
    for k in range(len(colours), len(colours) + int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(3, 8) * height / 128
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=k + 1)
        colours.append(rng.uniform(40, 210) + rng.uniform(-12, 12, 3))
    marks = np.asarray(layer)
    if region is not None:
        marks = np.where(region, marks, 0)
    for k, colour in enumerate(colours):
        image[marks == k + 1] = colour


def _border(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: object pixels with a 4-neighbour showing something else."""
    padded = np.pad(ids, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs


def _paint_objects(
    rng: np.random.Generator, image: np.ndarray, ids: np.ndarray, objects: list[_Object], spec: _SceneSpec
) -> None:
    """Paint instances and crowd regions: class colour, per-instance brightness and shading, a
    darker rim (so touching same-class instances stay separable); crowds are many small objects."""
    height, width = ids.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for index, obj in enumerate(objects):
        if obj.kind == "stuff":
            continue
        visible = ids == index + 1
        colour = np.array(spec.classes[obj.class_index].colour, np.float32)
        if obj.kind == "group":
            image[visible] = 0.45 * colour + 0.25 * image[visible]
            crowd = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(crowd)
            x0, y0, x1, y1 = obj.bbox
            shape = spec.classes[obj.class_index].shape
            for _ in range(int(rng.integers(12, 24))):
                small = rng.uniform(0.25, 0.4) * spec.size_range[0]
                polygon = _shape_polygon(shape, rng.uniform(x0, x1), rng.uniform(y0, y1), small, small, 0.0)
                if polygon is not None:
                    draw.polygon([tuple(p) for p in polygon.tolist()], fill=1)
            members = visible & (np.asarray(crowd) > 0)
            image[members] = colour * rng.uniform(0.85, 1.1)
            continue
        x0, y0, x1, y1 = obj.bbox
        gradient = rng.uniform(-25, 25, 2) / max(x1 - x0, y1 - y0, 1)
        shade = (xs - (x0 + x1) / 2) * gradient[0] + (ys - (y0 + y1) / 2) * gradient[1]
        tint = colour * rng.uniform(0.8, 1.12) + rng.uniform(-12, 12, 3)
        image[visible] = tint + shade[visible][:, None]
    rim = _border(ids) & np.isin(ids, [i + 1 for i, o in enumerate(objects) if o.kind == "instance"])
    image[rim] *= 0.55


def _finish(rng: np.random.Generator, image: np.ndarray) -> Image.Image:
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# COCO


def _coco_spec(height: int, width: int) -> _SceneSpec:
    side = min(height, width)
    return _SceneSpec(
        height,
        width,
        SHAPE_CLASSES,
        (3, 6),
        (0.19 * side, 0.36 * side),
        int(40 * max(1.0, side / 128) ** 2),
        (0.0, 1.0),
        15.0,
    )


def _coco_scene(
    rng: np.random.Generator, spec: _SceneSpec, index: int
) -> tuple[Image.Image, np.ndarray, list[_Object]]:
    height, width = spec.height, spec.width
    # Low chroma, so colour tells objects from background; brightness varies freely.
    base = rng.uniform(80, 170) + rng.uniform(-12, 12, 3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = base
    image += _smooth_field(rng, height, width, 5, 14) + 2 * _smooth_field(rng, height, width, 3, 10)[..., :1]
    _clutter(rng, image)
    objects, ids = _place_objects(rng, spec, [], index % len(spec.classes))
    _paint_objects(rng, image, ids, objects, spec)
    return _finish(rng, image), ids, objects


def _write_coco_split(root: Path, split: str, seed: int, count: int, size: tuple[int, int]) -> dict[str, int]:
    spec = _coco_spec(*size)
    image_dir = root / layout.coco_images(split)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _DATASET_KEYS["coco"], layout.SPLITS.index(split), index])
        picture, ids, objects = _coco_scene(rng, spec, index)
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        picture.save(image_dir / file_name, quality=95, subsampling=0)  # 4:4:4: crisp colour edges
        images.append({"id": image_id, "file_name": file_name, "height": spec.height, "width": spec.width})
        for obj_index, obj in enumerate(objects):
            visible = ids == obj_index + 1
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            if obj.kind == "group":
                # Crowd regions as COCO's uncompressed RLE: the plain run lengths of ``rle``.
                segmentation: Any = {
                    "counts": rle_counts([rle["counts"]])[0].tolist(),
                    "size": [int(v) for v in rle["size"]],
                }
            else:
                outers, holes = mask_outlines(visible)
                if len(outers) != 1 or holes:  # _place_objects guarantees this
                    raise RuntimeError(f"toy COCO {split} image {image_id}: instance {obj_index} is not one piece")
                segmentation = outers
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": spec.classes[obj.class_index].dataset_id,
                    "segmentation": segmentation,
                    "area": int(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": int(obj.kind == "group"),
                }
            )
    dataset = {
        "info": {"description": f"dcl toy COCO-format dataset ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.dataset_id, "name": c.name, "supercategory": "shape"} for c in SHAPE_CLASSES],
    }
    atomic_write_json(root / layout.coco_annotations(split), dataset, indent=None)
    if split == "val":
        # The toy COCO-OCC: its occluded images, renumbered like the real subset.
        from dcl.data.coco import load_ground_truth, occlusion_subset

        subset = occlusion_subset(load_ground_truth(dataset), OCCLUSION_MIN_OVERLAP)
        subset["info"]["description"] = "dcl toy COCO-OCC: the val images with overlapping instances"
        atomic_write_json(root / layout.TOY_OCCLUSION_SUBSET, subset, indent=None)
    crowd = sum(a["iscrowd"] for a in annotations)
    return {"images": len(images), "instances": len(annotations) - crowd, "crowd_regions": crowd}


# ----------------------------------------------------------------------------------------------
# Cityscapes


def _cityscapes_spec(height: int) -> _SceneSpec:
    # Cityscapes' evaluation ignores ground truth smaller than 100 pixels.
    return _SceneSpec(
        height,
        2 * height,
        CITYSCAPES_CLASSES,
        (3, 7),
        (0.16 * height, 0.3 * height),
        int(100 * max(1.0, height / 128) ** 2),
        (0.35, 1.0),
        8.0,
    )


def _cityscapes_background(rng: np.random.Generator, height: int, width: int) -> list[_Object]:
    """Sky over the whole image, a row of buildings up to the horizon, road below it."""
    horizon = int(round(height * rng.uniform(0.38, 0.5)))

    def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.int64)

    stuff = [_Object("stuff", "sky", -1, rect(0, 0, width - 1, height - 1))]
    x = int(rng.integers(0, width // 8))
    while x < width - 4:
        block = int(rng.uniform(0.12, 0.3) * width)
        top = int(rng.uniform(0.06, 0.3) * height)
        stuff.append(
            _Object(
                "stuff",
                "building",
                -1,
                rect(x, top, min(x + block, width - 1), horizon),
                look={"colour": rng.uniform(70, 150) + rng.uniform(-20, 20, 3)},
            )
        )
        x += block + int(rng.integers(1, max(2, width // 16)))
    stuff.append(_Object("stuff", "road", -1, rect(0, horizon, width - 1, height - 1)))
    return stuff


def _paint_stuff(rng: np.random.Generator, image: np.ndarray, ids: np.ndarray, objects: list[_Object]) -> None:
    height, width = ids.shape
    ys, xs = np.mgrid[0:height, 0:width]
    texture = 0.6 * _smooth_field(rng, height, width, 8, 18)
    for index, obj in enumerate(objects):
        if obj.kind != "stuff":
            continue
        region = ids == index + 1
        if obj.label == "sky":
            colour = np.array([150, 190, 235], np.float32) + rng.uniform(-15, 15, 3)
            image[region] = colour - (40 * ys[region] / height)[:, None]
        elif obj.label == "building":
            image[region] = obj.look["colour"]
            x0, y0, _, _ = obj.bbox
            window = region & ((xs - x0) % 7 < 3) & ((ys - y0) % 9 >= 3) & ((ys - y0) % 9 < 6)
            image[window] *= 0.55
        elif obj.label == "pole":
            image[region] = np.array([105, 105, 100], np.float32)
        else:  # road, with a dashed lane marking
            image[region] = np.array([72, 72, 78], np.float32) + rng.uniform(-8, 8, 3)
            lane_y = int(rng.uniform(0.7, 0.85) * height)
            dashes = region & (np.abs(ys - lane_y) <= max(1, height // 96)) & ((xs // 12) % 2 == 0)
            image[dashes] = 225
        image[region] += texture[region]


def _cut_fragment(
    rng: np.random.Generator, spec: _SceneSpec, objects: list[_Object], ids: np.ndarray
) -> tuple[list[_Object], np.ndarray]:
    """Stand a pole (a vertical strip down to the image's bottom) in front of an instance, one or
    two pixels inside its leftmost or rightmost column, so that its visible mask keeps a separate
    fragment of 1-2 pixels. Every other object stays as ``_visible_ok`` wants it; when no instance
    allows that, the scene is returned unchanged."""
    from scipy import ndimage

    height = spec.height
    candidates = [i for i, o in enumerate(objects) if o.kind == "instance"]
    for index in rng.permutation(candidates).tolist():
        visible = ids == index + 1
        columns = np.nonzero(visible.any(0))[0]
        counts = visible.sum(0)
        for side in rng.permutation(2).tolist():
            edge = int(columns[0] if side == 0 else columns[-1])
            # The fragment: the edge column, plus the next one while it stays within 2 pixels.
            step = 1 if side == 0 else -1
            kept, column = 0, edge
            while kept + counts[column] <= 2 and counts[column] > 0:
                kept += int(counts[column])
                column += step
            if kept == 0:
                continue
            pole_width = int(rng.integers(2, 4))
            x0, x1 = (column, column + pole_width - 1) if side == 0 else (column - pole_width + 1, column)
            if x0 < 0 or x1 > spec.width - 1:
                continue
            top = max(0, int(np.nonzero(visible.any(1))[0][0]) - int(rng.integers(2, 12)))
            polygon = np.array([(x0, top), (x1, top), (x1, height - 1), (x0, height - 1)], np.int64)
            pole = _Object("stuff", "pole", -1, polygon)
            trial = objects + [pole]
            trial_ids = np.where(_paint(height, spec.width, [pole]) > 0, np.int32(len(trial)), ids)
            cut = trial_ids == index + 1
            labels, pieces = ndimage.label(cut, structure=np.ones((3, 3)))
            sizes = sorted(np.bincount(labels.ravel())[1:].tolist())
            if pieces != 2 or sizes[0] > 2:
                continue
            main_piece = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
            outers, holes = mask_outlines(main_piece)
            if (
                sizes[1] < spec.min_visible_pixels
                or sizes[1] < 0.5 * objects[index].full_area
                or len(outers) != 1
                or holes
            ):
                continue
            others = [i for i, o in enumerate(objects) if o.kind != "stuff" and i != index and _overlaps(o, pole)]
            if all(_visible_ok(trial_ids, i, objects[i], spec) for i in others):
                return trial, trial_ids
    return objects, ids


def _cityscapes_scene(
    rng: np.random.Generator, spec: _SceneSpec, index: int
) -> tuple[Image.Image, np.ndarray, list[_Object]]:
    height, width = spec.height, spec.width
    background = _cityscapes_background(rng, height, width)
    objects, ids = _place_objects(rng, spec, background, index % len(spec.classes))
    if index % 3 == 1:
        objects, ids = _cut_fragment(rng, spec, objects, ids)
    image = np.zeros((height, width, 3), np.float32)
    _paint_stuff(rng, image, ids, objects)
    _clutter(rng, image, region=np.isin(ids, [i + 1 for i, o in enumerate(objects) if o.kind == "stuff"]))
    _paint_objects(rng, image, ids, objects, spec)
    return _finish(rng, image), ids, objects


def _write_cityscapes_split(root: Path, split: str, seed: int, count: int, height: int) -> dict[str, int]:
    # cityscapesscripts' own renderers make the PNGs from the polygons, as for the real dataset.
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    spec = _cityscapes_spec(height)
    city = CITYSCAPES_CITIES[split]
    image_dir = root / layout.cityscapes_images(split) / city
    gt_dir = root / layout.cityscapes_gt(split) / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    instances = groups = 0
    for index in range(count):
        rng = np.random.default_rng([seed, _DATASET_KEYS["cityscapes"], layout.SPLITS.index(split), index])
        picture, ids, objects = _cityscapes_scene(rng, spec, index)
        stem = f"{city}_000000_{index:06d}"
        picture.save(image_dir / f"{stem}_leftImg8bit.png", compress_level=1)  # noisy: hardly compresses
        polygons = {
            "imgHeight": spec.height,
            "imgWidth": spec.width,
            "objects": [
                {"label": o.label + ("group" if o.kind == "group" else ""), "polygon": o.polygon.tolist()}
                for o in objects
            ],
        }
        text = json.dumps(polygons, indent=4)
        (gt_dir / f"{stem}_gtFine_polygons.json").write_text(text + "\n", encoding="utf-8")
        annotation = Annotation()
        annotation.fromJsonText(text)
        instance_ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int32)
        # The image was painted from our own rasterisation; it must match the official one.
        expected = _cityscapes_instance_ids(objects)[ids]
        if not np.array_equal(instance_ids, expected):
            raise RuntimeError(f"toy Cityscapes {stem}: cityscapesscripts' instance image differs from ours")
        Image.fromarray(instance_ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
        createLabelImage(annotation, "ids").save(gt_dir / f"{stem}_gtFine_labelIds.png")
        createLabelImage(annotation, "color").save(gt_dir / f"{stem}_gtFine_color.png")
        instances += sum(o.kind == "instance" for o in objects)
        groups += sum(o.kind == "group" for o in objects)
    return {"images": count, "instances": instances, "crowd_regions": groups}


def _cityscapes_instance_ids(objects: list[_Object]) -> np.ndarray:
    """Lookup table: painted index (object index + 1; 0 = nothing) -> Cityscapes instance id."""
    table = np.zeros(len(objects) + 1, np.int32)
    seen: dict[str, int] = {}
    for index, obj in enumerate(objects):
        label_id = name2label[obj.label].id
        if obj.kind == "instance":
            table[index + 1] = label_id * 1000 + seen.get(obj.label, 0)
            seen[obj.label] = seen.get(obj.label, 0) + 1
        else:
            table[index + 1] = label_id
    return table


def _convert_cityscapes(root: Path) -> None:
    """Write the COCO JSON of both toy Cityscapes splits of ``root`` (and Detectron's of val)."""
    for split in layout.SPLITS:
        cityscapes.cityscapes_to_coco(str(root), split, str(root / layout.cityscapes_coco_json(split)))
    detectron = layout.cityscapes_coco_json("val", style="detectron")
    cityscapes.cityscapes_to_coco(str(root), "val", str(root / detectron), style="detectron")


# ----------------------------------------------------------------------------------------------
# Output directory


def _check_destination(out: Path) -> None:
    """Refuse (InputError, nothing touched) unless ``out`` is new, empty or a previous toy dataset."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if not out.exists():
        return
    entries = sorted(e for e in os.listdir(out) if not e.startswith(_TMP_PREFIX))
    if not entries:
        return
    marker = out / MARKER_NAME
    if not marker.is_file():
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise InputError(
            f"--out {out} is not empty ({shown}) and is not a toy dataset written by `dcl data toy` "
            f"(no {MARKER_NAME}); refusing to write into it. Choose a new or empty directory."
        )
    content = read_json(marker, "toy dataset marker")
    if not isinstance(content, dict) or content.get("generator") != MARKER_GENERATOR:
        raise InputError(
            f'{marker} is not a `dcl data toy` marker (expected "generator": '
            f'"{MARKER_GENERATOR}"); refusing to write into {out}'
        )


def _checked_arguments(seed: int, num_train: int, num_val: int, size: tuple[int, int]) -> tuple[int, int]:
    """The COCO image ``(height, width)``, after checking every argument (InputError naming the
    command-line flag of the first one out of range)."""
    if seed < 0:
        raise InputError(f"--seed must be >= 0, not {seed}")
    if num_train < 1 or num_val < 1:
        raise InputError(f"--num-train and --num-val must be >= 1 (got {num_train}, {num_val})")
    try:
        return parse_size(f"{size[0]}x{size[1]}")
    except ValueError as error:
        raise InputError(f"--size: {error}") from None


def _write_datasets(
    work: Path, seed: int, counts_per_split: tuple[int, int], size: tuple[int, int]
) -> dict[str, dict[str, Any]]:
    """Write both toy datasets under ``work`` (``counts_per_split``: train and val images; ``size``:
    the COCO ``(height, width)``), with the Cityscapes COCO files; return per dataset folder and
    split the image, instance and crowd counts."""
    height, _ = size
    coco, cityscapes_folder = TOY_COCO.folder, TOY_CITYSCAPES.folder
    counts: dict[str, dict[str, Any]] = {coco: {}, cityscapes_folder: {}}
    for split, count in zip(layout.SPLITS, counts_per_split):
        counts[coco][split] = _write_coco_split(work / coco, split, seed, count, size)
        counts[cityscapes_folder][split] = _write_cityscapes_split(work / cityscapes_folder, split, seed, count, height)
    _convert_cityscapes(work / cityscapes_folder)
    return counts


def _move_into_place(work: Path, out: Path) -> None:
    """Move the datasets written in ``work`` to ``out``, the ones they replace into ``work`` (to be
    deleted with it)."""
    for name in (TOY_COCO.folder, TOY_CITYSCAPES.folder):
        if (out / name).exists():
            (out / name).rename(work / f"previous-{name}")
        (work / name).rename(out / name)


def generate_toy_datasets(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = 64,
    num_val: int = 16,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Write the toy COCO and Cityscapes datasets under ``out`` (layout in the module docstring).

    Everything is generated in a temporary directory inside ``out`` and moved into place when
    complete, so an interrupted run leaves the previous data (or nothing); entries of ``out``
    other than ``coco/``, ``cityscapes/`` and the marker are left alone.

    Args:
        out: destination directory: new, empty, or a previous toy dataset.
        seed: non-negative seed; equal arguments give byte-identical files.
        num_train, num_val: images per split (each >= 1), the same for both formats.
        size: ``(height, width)`` of the COCO images; Cityscapes images are ``height x 2*height``.

    Returns:
        The marker's content: version, arguments, and per dataset and split the numbers of images,
        instances and crowd regions.

    Raises:
        InputError: ``out`` holds something else, or an argument is out of range.
    """
    out = Path(out)
    height, width = _checked_arguments(seed, num_train, num_val, size)
    _check_destination(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    work = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out))
    try:
        counts = _write_datasets(work, seed, (num_train, num_val), (height, width))
        _move_into_place(work, out)
        marker = {
            "generator": MARKER_GENERATOR,
            "version": GENERATOR_VERSION,
            "seed": seed,
            "num_train": num_train,
            "num_val": num_val,
            "size": [height, width],
            "cityscapes_size": [height, 2 * height],
            "counts": counts,
        }
        atomic_write_json(out / MARKER_NAME, marker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return marker
