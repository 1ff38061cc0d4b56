"""Tests of the synthetic datasets (dcl.data.toydata): exact outlines, determinism, refusal of foreign
directories, COCO validity and alignment with the pixels, Cityscapes conventions, readability by
detectron2's Cityscapes loader (both modes) and evaluability by cityscapesscripts.

Every check compares against something independent of the generator: pycocotools' rasteriser,
scipy's connected components, a painter written here from the Cityscapes documentation, the
class colours in the images, detectron2's loaders and cityscapesscripts' evaluation.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from scipy import ndimage

import dcl.data.cityscapes
from dcl.cli import main
from dcl.io import InputError
from dcl.data.toydata import (
    CITYSCAPES_CITIES,
    CITYSCAPES_CLASSES,
    SHAPE_CLASSES,
    MARKER_NAME,
    generate_toy_datasets,
    mask_outlines,
    parse_size,
)

NUM_TRAIN, NUM_VAL = 4, 8  # 8 val images: every Cityscapes class appears in val
INSTANCE_LABEL_IDS = {24, 25, 26, 27, 28, 31, 32, 33}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    generate_toy_datasets(out, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shoelace(polygon: list[int]) -> float:
    x, y = np.array(polygon[0::2], float), np.array(polygon[1::2], float)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _cityscapes_stems(toy: Path, split: str) -> list[tuple[Path, Path]]:
    """(image file, gtFine prefix) of every image of a split."""
    city = CITYSCAPES_CITIES[split]
    images = sorted((toy / "cityscapes" / "leftImg8bit" / split / city).glob("*_leftImg8bit.png"))
    return [
        (image, toy / "cityscapes" / "gtFine" / split / city / image.name.replace("leftImg8bit.png", "gtFine_"))
        for image in images
    ]


# ----------------------------------------------------------------------------------------------
# Outlines


def test_mask_outlines_rasterise_back_exactly():
    rng = np.random.default_rng(1)
    with_holes = 0
    for _ in range(400):
        height, width = (int(v) for v in rng.integers(1, 16, 2))
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.9)
        outers, holes = mask_outlines(mask)
        # Outer outlines = 4-connected components of the foreground.
        _, components = ndimage.label(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
        assert len(outers) == components
        # Holes = 8-connected background regions that do not reach the border.
        background, regions = ndimage.label(np.pad(~mask, 1, constant_values=True), structure=np.ones((3, 3)))
        assert len(holes) == regions - 1
        assert sum(_shoelace(p) for p in outers + holes) == mask.sum()
        assert all(_shoelace(p) > 0 for p in outers) and all(_shoelace(p) < 0 for p in holes)
        if outers and not holes:
            raster = mask_util.decode(mask_util.merge(mask_util.frPyObjects(outers, height, width)))
            np.testing.assert_array_equal(raster, mask)
        with_holes += bool(holes)
    assert with_holes > 20  # the hole branch was exercised


def test_mask_outlines_of_a_rectangle_are_its_four_corners():
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:6] = True
    outers, holes = mask_outlines(mask)
    assert holes == []
    assert len(outers) == 1 and sorted(zip(outers[0][0::2], outers[0][1::2])) == [(2, 1), (2, 4), (6, 1), (6, 4)]


def test_parse_size():
    assert parse_size("128x256") == (128, 256)
    assert parse_size(" 96X64 ") == (96, 64)
    for bad in ("128", "12x128", "128x5000", "axb", "128x128x3"):
        with pytest.raises(ValueError):
            parse_size(bad)


# ----------------------------------------------------------------------------------------------
# Determinism and the output directory


def test_same_arguments_give_identical_bytes_and_rerun_is_allowed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    generate_toy_datasets(first, seed=3, num_train=2, num_val=1)
    generate_toy_datasets(second, seed=3, num_train=2, num_val=1)
    tree = _tree(first)
    assert tree == _tree(second)
    assert any(name.endswith("_gtFine_instanceIds.png") for name in tree)
    generate_toy_datasets(first, seed=3, num_train=2, num_val=1)  # into a previous toy dataset
    assert _tree(first) == tree
    assert not [p for p in first.iterdir() if p.name.startswith(".dcl-toy-tmp-")]


def test_different_seed_gives_different_data(tmp_path):
    generate_toy_datasets(tmp_path / "a", seed=0, num_train=2, num_val=1)
    generate_toy_datasets(tmp_path / "b", seed=1, num_train=2, num_val=1)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in (
        "coco/train/000000000001.jpg",
        "coco/annotations/instances_train.json",
        f"cityscapes/leftImg8bit/val/{CITYSCAPES_CITIES['val']}/"
        f"{CITYSCAPES_CITIES['val']}_000000_000000_leftImg8bit.png",
    ):
        assert a[name] != b[name]


def test_rerun_with_fewer_images_leaves_no_stale_files_and_keeps_user_files(tmp_path):
    out = tmp_path / "toy"
    generate_toy_datasets(out, seed=0, num_train=3, num_val=1)
    (out / "notes.txt").write_text("mine")
    marker = generate_toy_datasets(out, seed=0, num_train=1, num_val=1)
    assert len(list((out / "coco" / "train").iterdir())) == 1
    assert len(list((out / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / MARKER_NAME).read_text()) == marker
    assert marker["num_train"] == 1 and marker["counts"]["coco"]["train"]["images"] == 1


def test_image_k_does_not_depend_on_the_number_of_images(tmp_path):
    generate_toy_datasets(tmp_path / "small", seed=0, num_train=1, num_val=1)
    generate_toy_datasets(tmp_path / "large", seed=0, num_train=3, num_val=1)
    name = "coco/train/000000000001.jpg"
    assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def test_refuses_a_foreign_non_empty_directory_and_touches_nothing(tmp_path, capsys):
    foreign = tmp_path / "mine"
    (foreign / "coco").mkdir(parents=True)
    (foreign / "coco" / "keep.json").write_text('{"precious": true}')
    (foreign / "notes.txt").write_text("do not touch")
    before = _tree(foreign)
    with pytest.raises(InputError, match=r"not empty .*not a toy dataset.*\.dcl-toy\.json"):
        generate_toy_datasets(foreign)
    assert main(["data", "toy", "--out", str(foreign), "--num-train", "1", "--num-val", "1"]) == 1
    assert f"--out {foreign} is not empty" in capsys.readouterr().err
    assert _tree(foreign) == before
    assert sorted(p.name for p in foreign.iterdir()) == ["coco", "notes.txt"]


def test_refuses_a_marker_from_something_else_and_a_file(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER_NAME).write_text('{"generator": "somebody-else"}')
    with pytest.raises(InputError, match="not a `dcl data toy` marker"):
        generate_toy_datasets(other)
    assert [p.name for p in other.iterdir()] == [MARKER_NAME]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        generate_toy_datasets(a_file)


def test_empty_directory_is_accepted(tmp_path):
    generate_toy_datasets(tmp_path, seed=0, num_train=1, num_val=1)
    assert (tmp_path / MARKER_NAME).is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="--seed"):
        generate_toy_datasets(tmp_path / "x", seed=-1)
    with pytest.raises(InputError, match="--num-train"):
        generate_toy_datasets(tmp_path / "x", num_train=0)
    with pytest.raises(InputError, match="--size"):
        generate_toy_datasets(tmp_path / "x", size=(32, 32))
    assert not (tmp_path / "x").exists()
    for argv in (["--num-train", "0"], ["--seed", "-2"], ["--size", "big"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["data", "toy", *(["--out", str(tmp_path / "y")] if argv else []), *argv])
        assert exit_info.value.code == 2


def test_cli_writes_both_formats(tmp_path, capsys):
    out = tmp_path / "toy"
    assert (
        main(
            ["data", "toy", "--out", str(out), "--num-train", "2", "--num-val", "1", "--size", "96x160", "--seed", "5"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "coco/train: 2 images" in printed and "cityscapes/val: 1 images" in printed
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["size"] == [96, 160] and marker["cityscapes_size"] == [96, 192] and marker["seed"] == 5
    assert Image.open(out / "coco" / "train" / "000000000001.jpg").size == (160, 96)
    image, _ = _cityscapes_stems(out, "val")[0]
    assert Image.open(image).size == (192, 96)


# ----------------------------------------------------------------------------------------------
# COCO


def test_coco_json_is_valid_and_consistent(toy):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        coco = COCO(str(toy / "coco" / "annotations" / f"instances_{split}.json"))
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [
            (1, "disc"),
            (2, "triangle"),
            (3, "square"),
        ]
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        assert sorted(coco.getAnnIds()) == list(range(1, len(coco.anns) + 1))
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(toy / "coco" / split / image["file_name"]) as picture:
                assert picture.mode == "RGB" and picture.size == (image["width"], image["height"]) == (128, 128)
            assert len(coco.getAnnIds(imgIds=image["id"], iscrowd=False)) >= 2


def _colour_alignment(
    pixels: np.ndarray, masks: dict[int, np.ndarray], crowd: np.ndarray, palette: list[tuple[int, int, int]]
) -> list[float]:
    """Per class: IoU between the union of its annotated masks and the pixels painted in its
    colour (nearest palette colour after dividing by the brightest channel, which undoes the
    brightness changes), near the objects and away from crowd regions. 1 = perfect alignment;
    annotations shifted by one pixel score about 0.9.

    Args:
        pixels: (H, W, 3) image; masks: class index -> (H, W) bool; crowd: (H, W) bool.
    """
    chroma = pixels / np.maximum(pixels.max(axis=2, keepdims=True), 1)
    reference = np.array(palette, float)
    reference /= reference.max(axis=1, keepdims=True)
    distance = np.linalg.norm(chroma[:, :, None, :] - reference[None, None], axis=3)
    painted_class = np.where(distance.min(axis=2) < 0.2, distance.argmin(axis=2), -1)
    union = np.any(list(masks.values()), axis=0)
    near = ndimage.binary_dilation(union, iterations=3) & ~ndimage.binary_dilation(crowd)
    ious = []
    for index, mask in masks.items():
        annotated, painted = mask & near, (painted_class == index) & near
        if annotated.any():
            ious.append((annotated & painted).sum() / (annotated | painted).sum())
    return ious


def _coco_masks(coco: COCO, image_id: int) -> list[tuple[dict, np.ndarray]]:
    return [(ann, coco.annToMask(ann).astype(bool)) for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]


def test_coco_annotations_match_the_pixels(toy):
    """Rasterised segmentations: disjoint (occluders excluded), area and bbox agree, polygons for
    instances and RLE for crowds, and each instance covers pixels of its class colour."""
    touching = crowd = 0
    ious = []
    coco = COCO(str(toy / "coco" / "annotations" / "instances_val.json"))
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(toy / "coco" / "val" / image["file_name"]), dtype=float)
        masks = _coco_masks(coco, image["id"])
        by_class = {
            c.dataset_id - 1: np.any(
                [m for a, m in masks if a["category_id"] == c.dataset_id and not a["iscrowd"]]
                or [np.zeros_like(masks[0][1])],
                axis=0,
            )
            for c in SHAPE_CLASSES
        }
        crowd_mask = np.any([m for a, m in masks if a["iscrowd"]] or [np.zeros_like(masks[0][1])], axis=0)
        ious += _colour_alignment(pixels, by_class, crowd_mask, [c.colour for c in SHAPE_CLASSES])
        union = np.zeros((image["height"], image["width"]), int)
        for ann, mask in masks:
            union += mask
            assert ann["area"] == mask.sum() > 0
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            if ann["iscrowd"]:
                crowd += 1
                assert isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], list)
                continue
            assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1
        assert union.max() == 1  # visible masks never overlap
        instance_masks = [m for a, m in masks if not a["iscrowd"]]
        touching += any(
            (ndimage.binary_dilation(a) & b).any()
            for i, a in enumerate(instance_masks)
            for b in instance_masks[i + 1 :]
        )
    assert touching >= NUM_VAL // 4
    assert min(ious) > 0.85 and np.mean(ious) > 0.97, (min(ious), np.mean(ious))
    coco_train = COCO(str(toy / "coco" / "annotations" / "instances_train.json"))
    crowd += len(coco_train.getAnnIds(iscrowd=True))
    assert crowd >= 1


def test_coco_loads_in_detectron2(toy):
    import dcl.compat  # noqa: F401
    from detectron2.data.datasets.coco import load_coco_json

    dicts = load_coco_json(str(toy / "coco" / "annotations" / "instances_val.json"), str(toy / "coco" / "val"))
    assert len(dicts) == NUM_VAL
    assert all(Path(d["file_name"]).is_file() for d in dicts)
    categories = Counter(a["category_id"] for d in dicts for a in d["annotations"])
    assert set(categories) == {1, 2, 3}  # load_coco_json without a dataset name keeps dataset ids


# ----------------------------------------------------------------------------------------------
# Cityscapes


def _paint_cityscapes(polygons: dict) -> tuple[np.ndarray, np.ndarray]:
    """Independent renderer from the Cityscapes documentation: polygons in order, later ones on
    top; instance ids label*1000 + k (k counted per class), group regions the plain label id."""
    size = (polygons["imgWidth"], polygons["imgHeight"])
    instance = Image.new("I", size, 0)
    label = Image.new("I", size, 0)
    seen: Counter = Counter()
    for obj in polygons["objects"]:
        name = obj["label"]
        group = name.endswith("group") and name not in name2label
        label_id = name2label[name[: -len("group")] if group else name].id
        value = label_id
        if label_id in INSTANCE_LABEL_IDS and not group:
            value = label_id * 1000 + seen[label_id]
            seen[label_id] += 1
        points = [tuple(p) for p in obj["polygon"]]
        ImageDraw.Draw(instance).polygon(points, fill=value)
        ImageDraw.Draw(label).polygon(points, fill=label_id)
    return np.asarray(instance), np.asarray(label)


def test_cityscapes_files_follow_the_official_conventions(toy):
    occluded = 0
    classes_in_val: set[int] = set()
    for split in ("train", "val"):
        stems = _cityscapes_stems(toy, split)
        assert len(stems) == (NUM_TRAIN if split == "train" else NUM_VAL)
        for image_file, gt in stems:
            with Image.open(image_file) as image:
                assert image.mode == "RGB" and image.size == (256, 128)
            polygons = json.loads(Path(str(gt) + "polygons.json").read_text())
            assert set(polygons) == {"imgHeight", "imgWidth", "objects"}
            assert (polygons["imgHeight"], polygons["imgWidth"]) == (128, 256)
            for obj in polygons["objects"]:
                assert set(obj) == {"label", "polygon"}
                assert all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in obj["polygon"])
            with Image.open(str(gt) + "instanceIds.png") as f:
                assert f.mode == "I;16"  # 16-bit, as the real instanceIds files
                instance_ids = np.asarray(f).astype(np.int64)
            label_ids = np.asarray(Image.open(str(gt) + "labelIds.png"))
            colours = np.asarray(Image.open(str(gt) + "color.png").convert("RGB"))
            expected_instance, expected_label = _paint_cityscapes(polygons)
            np.testing.assert_array_equal(instance_ids, expected_instance)
            np.testing.assert_array_equal(label_ids, expected_label)
            np.testing.assert_array_equal(label_ids, np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids))
            assert set(np.unique(label_ids)) <= {7, 11, 17, 23} | INSTANCE_LABEL_IDS  # road, building, pole, sky
            assert {7, 23} <= set(np.unique(label_ids))  # road and sky always
            for label_id in np.unique(label_ids):
                assert (colours[label_ids == label_id] == id2label[int(label_id)].color).all()
            # An instance's visible pixels are its polygon minus later (nearer) polygons.
            for value in np.unique(instance_ids[instance_ids >= 1000]):
                index = [
                    o
                    for o in polygons["objects"]
                    if name2label.get(o["label"]) is not None and name2label[o["label"]].id == value // 1000
                ][value % 1000]
                alone = Image.new("1", (256, 128), 0)
                ImageDraw.Draw(alone).polygon([tuple(p) for p in index["polygon"]], fill=1)
                visible = (instance_ids == value).sum()
                assert visible >= 100
                occluded += visible < np.asarray(alone).sum()
                if split == "val":
                    classes_in_val.add(int(value // 1000))
    assert occluded >= 5
    assert classes_in_val == INSTANCE_LABEL_IDS


def test_cityscapes_images_match_their_annotations(toy):
    ious = []
    for image_file, gt in _cityscapes_stems(toy, "val") + _cityscapes_stems(toy, "train"):
        pixels = np.asarray(Image.open(image_file), dtype=float)
        instance_ids = np.asarray(Image.open(str(gt) + "instanceIds.png")).astype(np.int64)
        by_class = {
            i: (instance_ids >= 1000) & (instance_ids // 1000 == c.dataset_id) for i, c in enumerate(CITYSCAPES_CLASSES)
        }
        crowd = (instance_ids >= 24) & (instance_ids < 1000)
        ious += _colour_alignment(pixels, by_class, crowd, [c.colour for c in CITYSCAPES_CLASSES])
    assert min(ious) > 0.85 and np.mean(ious) > 0.97, (min(ious), np.mean(ious))


def test_cityscapes_classes_are_cityscapesscripts_instance_classes():
    assert [(c.name, c.dataset_id) for c in CITYSCAPES_CLASSES] == [
        ("person", 24),
        ("rider", 25),
        ("car", 26),
        ("truck", 27),
        ("bus", 28),
        ("train", 31),
        ("motorcycle", 32),
        ("bicycle", 33),
    ]
    assert len({c.shape for c in CITYSCAPES_CLASSES}) == 8 and len({c.colour for c in CITYSCAPES_CLASSES}) == 8
    assert len({c.shape for c in SHAPE_CLASSES}) == 3


def test_cityscapes_readable_by_detectron2_loader_in_both_modes(toy):
    import dcl.compat  # noqa: F401
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances
    from detectron2.structures import BoxMode

    image_dir = toy / "cityscapes" / "leftImg8bit" / "val"
    gt_dir = toy / "cityscapes" / "gtFine" / "val"
    from_json = load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)
    from_png = load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=False, to_polygons=False)
    contiguous = {c.dataset_id: i for i, c in enumerate(CITYSCAPES_CLASSES)}
    by_name = {Path(d["file_name"]).name: d for d in from_png}
    assert len(from_json) == len(from_png) == NUM_VAL
    ious = []
    for record in from_json:
        image_file = Path(record["file_name"])
        assert image_file.is_file() and (record["height"], record["width"]) == (128, 256)
        gt = gt_dir / image_file.parent.name / image_file.name.replace("leftImg8bit.png", "gtFine_instanceIds.png")
        instance_ids = np.asarray(Image.open(gt)).astype(np.int64)
        values = [v for v in np.unique(instance_ids) if v >= 24]
        expected = Counter((contiguous[v // 1000 if v >= 1000 else v], v < 1000) for v in values)
        for records in (record, by_name[image_file.name]):
            assert Counter((a["category_id"], bool(a["iscrowd"])) for a in records["annotations"]) == expected
        # The polygons detectron2 derives from the JSON cover the visible pixels of the PNG.
        for annotation in record["annotations"]:
            if annotation["iscrowd"]:
                continue
            assert annotation["bbox_mode"] == BoxMode.XYXY_ABS
            polygon_mask = mask_util.decode(
                mask_util.merge(mask_util.frPyObjects(annotation["segmentation"], 128, 256))
            )
            png_masks = [
                instance_ids == v for v in values if v >= 1000 and contiguous[v // 1000] == annotation["category_id"]
            ]
            ious.append(max((polygon_mask & m).sum() / (polygon_mask | m).sum() for m in png_masks))
    assert min(ious) > 0.6 and np.mean(ious) > 0.8


def test_cityscapes_evaluable_by_cityscapesscripts(toy, tmp_path, monkeypatch):
    """Ground truth submitted as predictions scores AP 1 for every class; one class predicted
    as another scores 0 for it."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as evaluation

    monkeypatch.chdir(tmp_path)  # the evaluation writes matches.json into the working directory
    # cityscapesscripts 2.3.0 predates numpy 2: it calls np.in1d (removed in 2.4; np.isin is its
    # successor) and JSON-dumps np.count_nonzero results, numpy integers since numpy 2.
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)

    def write_json(obj, file_name):
        with open(file_name, "w") as f:
            json.dump(obj, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)

    monkeypatch.setattr(evaluation, "writeDict2JSON", write_json)

    def evaluate(relabel: dict[int, int]) -> dict:
        predictions = tmp_path / f"pred{len(relabel)}"
        predictions.mkdir()
        prediction_files, gt_files = [], []
        for _, gt in _cityscapes_stems(toy, "val"):
            gt_file = Path(str(gt) + "instanceIds.png")
            instance_ids = np.asarray(Image.open(gt_file)).astype(np.int64)
            lines = []
            for value in np.unique(instance_ids[instance_ids >= 1000]):
                mask_name = f"{gt.name}{value}.png"
                Image.fromarray(((instance_ids == value) * 255).astype(np.uint8)).save(predictions / mask_name)
                label_id = int(value // 1000)
                lines.append(f"{mask_name} {relabel.get(label_id, label_id)} 1.0\n")
            prediction_file = predictions / f"{gt.name}pred.txt"
            prediction_file.write_text("".join(lines))
            prediction_files.append(str(prediction_file))
            gt_files.append(str(gt_file))
        args = copy.deepcopy(evaluation.args)
        args.predictionPath = str(predictions.resolve())
        args.gtInstancesFile = str(predictions / "gtInstances.json")
        args.JSONOutput, args.quiet = False, True
        return evaluation.evaluateImgLists(prediction_files, gt_files, args)

    perfect = evaluate({})
    assert perfect["averages"]["allAp"] == pytest.approx(1.0)
    assert {name: v["ap"] for name, v in perfect["averages"]["classes"].items()} == {
        c.name: 1.0 for c in CITYSCAPES_CLASSES
    }
    swapped = evaluate({26: 27})  # cars predicted as trucks
    assert swapped["averages"]["classes"]["car"]["ap"] == 0.0
    assert swapped["averages"]["classes"]["bicycle"]["ap"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# Marker and the Cityscapes -> COCO conversion hook


def test_marker_counts_match_the_files(toy):
    marker = json.loads((toy / MARKER_NAME).read_text())
    assert marker["generator"] == "dcl.data.toydata" and marker["seed"] == 0
    for split in ("train", "val"):
        coco = json.loads((toy / "coco" / "annotations" / f"instances_{split}.json").read_text())
        crowd = sum(a["iscrowd"] for a in coco["annotations"])
        assert marker["counts"]["coco"][split] == {
            "images": len(coco["images"]),
            "instances": len(coco["annotations"]) - crowd,
            "crowd_regions": crowd,
        }
        values = [
            np.unique(np.asarray(Image.open(str(gt) + "instanceIds.png")).astype(np.int64))
            for _, gt in _cityscapes_stems(toy, split)
        ]
        assert marker["counts"]["cityscapes"][split] == {
            "images": len(values),
            "instances": int(sum((v >= 1000).sum() for v in values)),
            "crowd_regions": int(sum(((v >= 24) & (v < 1000)).sum() for v in values)),
        }


def test_toy_cityscapes_coco_json_written_by_dcl_cityscapes(toy):
    marker = json.loads((toy / MARKER_NAME).read_text())
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        coco = COCO(str(toy / "cityscapes" / "annotations" / f"instancesonly_filtered_gtFine_{split}.json"))
        assert len(coco.getImgIds()) == count
        counts = marker["counts"]["cityscapes"][split]
        assert len(coco.getAnnIds(iscrowd=False)) == counts["instances"]
        assert len(coco.getAnnIds(iscrowd=True)) == counts["crowd_regions"]


def test_conversion_hook_calls_dcl_cityscapes(tmp_path, monkeypatch):
    calls = []

    def cityscapes_to_coco(root, split, output, segmentation="rle", style="default"):
        calls.append((Path(root).name, split, Path(output).name, style))
        assert (Path(root) / "gtFine" / split).is_dir()  # the data is complete when converted
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({"split": split}))

    monkeypatch.setattr(dcl.data.cityscapes, "cityscapes_to_coco", cityscapes_to_coco)
    generate_toy_datasets(tmp_path, num_train=1, num_val=1)
    assert calls == [
        ("cityscapes", "train", "instancesonly_filtered_gtFine_train.json", "default"),
        ("cityscapes", "val", "instancesonly_filtered_gtFine_val.json", "default"),
        ("cityscapes", "val", "instancesonly_filtered_gtFine_val.detectron.json", "detectron"),
    ]
    written = tmp_path / "cityscapes" / "annotations" / "instancesonly_filtered_gtFine_val.json"
    assert json.loads(written.read_text()) == {"split": "val"}
