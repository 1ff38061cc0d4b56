"""dcl.data.cityscapes: gtFine -> COCO equals the instanceIds PNGs; Cityscapes AP equals cityscapesscripts."""

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from dcl.data.cityscapes import cityscapes_to_coco
from dcl.cli import main
from dcl.evaluation.evaluate import evaluate
from dcl.io import InputError
from instance_fixtures import encode

# label id -> our category id (person, rider, car, truck, bus, train, motorcycle, bicycle)
CATEGORY_OF_LABEL = {24: 1, 25: 2, 26: 3, 27: 4, 28: 5, 31: 6, 32: 7, 33: 8}
H, W = 64, 128


def _scene(frame: int) -> np.ndarray:
    """instanceIds of one image: road/sky, touching cars, a person, a car group (crowd),
    a caravan (instance class not evaluated), a 2-pixel bicycle."""
    ids = np.full((H, W), 7, dtype=np.uint16)  # road
    ids[:12] = 23  # sky
    ids[20:44, 8 + frame : 40 + frame] = 26000  # car
    ids[20:44, 40 + frame : 70] = 26001  # touching car
    ids[40:62, 80:96] = 24000 + frame  # person
    ids[4:16, 100:124] = 26  # car group: crowd
    ids[50:60, 2:8] = 29000  # caravan: ignored in evaluation
    ids[30, 110:112] = 33000  # tiny bicycle
    if frame == 1:
        ids[46:60, 30:60] = 32000  # motorcycle
    return ids


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    for city, frames in (("zurich", [3, 1]), ("aachen", [0])):  # unsorted on purpose
        for frame in frames:
            stem = f"{city}_000000_{frame:06d}"
            for kind, image in (
                ("gtFine", Image.fromarray(_scene(frame))),
                ("leftImg8bit", Image.fromarray(np.zeros((H, W, 3), np.uint8))),
            ):
                directory = root / kind / "val" / city
                directory.mkdir(parents=True, exist_ok=True)
                suffix = "gtFine_instanceIds" if kind == "gtFine" else "leftImg8bit"
                image.save(directory / f"{stem}_{suffix}.png")
    return root


def expected_annotations(root, file_name):
    """What the COCO file must hold for one image, read straight from its PNG."""
    city = file_name.split("/")[0]
    stem = file_name.split("/")[1].replace("_leftImg8bit.png", "")
    ids = np.array(Image.open(root / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png"))
    expected = []
    for value in sorted(set(ids.ravel().tolist())):
        label = value // 1000 if value >= 1000 else value
        if label in CATEGORY_OF_LABEL:
            expected.append((CATEGORY_OF_LABEL[label], int(value < 1000), ids == value))
    return expected


def test_rle_conversion_equals_instance_pngs(cityscapes_root, tmp_path):
    coco = cityscapes_to_coco(cityscapes_root, "val", tmp_path / "gt.json")
    assert json.loads((tmp_path / "gt.json").read_text()) == coco
    assert [(im["id"], im["file_name"]) for im in coco["images"]] == [
        (1, "aachen/aachen_000000_000000_leftImg8bit.png"),
        (2, "zurich/zurich_000000_000001_leftImg8bit.png"),
        (3, "zurich/zurich_000000_000003_leftImg8bit.png"),
    ]
    assert all((im["height"], im["width"]) == (H, W) for im in coco["images"])
    assert [(c["id"], c["name"], c["cityscapes_label_id"]) for c in coco["categories"]] == [
        (1, "person", 24),
        (2, "rider", 25),
        (3, "car", 26),
        (4, "truck", 27),
        (5, "bus", 28),
        (6, "train", 31),
        (7, "motorcycle", 32),
        (8, "bicycle", 33),
    ]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected = expected_annotations(cityscapes_root, image["file_name"])
        assert len(anns) == len(expected)
        for ann, (category, crowd, mask) in zip(anns, expected):
            assert (ann["category_id"], ann["iscrowd"]) == (category, crowd)
            np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_conversion_is_deterministic(cityscapes_root, tmp_path):
    cityscapes_to_coco(cityscapes_root, "val", tmp_path / "a.json")
    cityscapes_to_coco(cityscapes_root, "val", tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_polygon_mode(cityscapes_root):
    rle = cityscapes_to_coco(cityscapes_root, "val", None)
    polygon = cityscapes_to_coco(cityscapes_root, "val", None, segmentation="polygon")
    assert len(rle["annotations"]) == len(polygon["annotations"])
    for a, b in zip(rle["annotations"], polygon["annotations"]):
        assert (a["id"], a["category_id"], a["iscrowd"], a["area"], a["bbox"]) == (
            b["id"],
            b["category_id"],
            b["iscrowd"],
            b["area"],
            b["bbox"],
        )
        mask = mask_utils.decode(a["segmentation"]).astype(bool)
        if a["iscrowd"] or a["area"] < 3:  # crowd regions and too-small instances stay RLE
            assert b["segmentation"] == a["segmentation"]
            continue
        assert isinstance(b["segmentation"], list) and all(len(p) >= 6 for p in b["segmentation"])
        drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(b["segmentation"], H, W))).astype(bool)
        # Contours run through boundary pixel centres: the polygon lies inside the mask, nearly filling it.
        assert not (drawn & ~mask).any()
        assert (drawn & mask).sum() / mask.sum() > 0.8


def test_conversion_errors(cityscapes_root, tmp_path):
    with pytest.raises(InputError, match="not found"):
        cityscapes_to_coco(cityscapes_root, "train", None)
    broken = tmp_path / "broken"
    (broken / "gtFine" / "val" / "x").mkdir(parents=True)
    (broken / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    Image.fromarray(_scene(0)).save(broken / "gtFine" / "val" / "x" / "x_000000_000000_gtFine_instanceIds.png")
    with pytest.raises(InputError, match=r"have no image .* x/x_000000_000000_leftImg8bit.png"):
        cityscapes_to_coco(broken, "val", None)
    Image.fromarray(np.zeros((H // 2, W, 3), np.uint8)).save(
        broken / "leftImg8bit" / "val" / "x" / "x_000000_000000_leftImg8bit.png"
    )
    out = tmp_path / "gt.json"
    result = subprocess.run(
        [sys.executable, "-m", "dcl", "data", "cityscapes-to-coco", str(broken), "--split", "val", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(
        rf"x_000000_000000_gtFine_instanceIds.png: instanceIds is {W}x{H} but its image \S+ is "
        rf"{W}x{H // 2} \(width x height\): not its GT",
        result.stderr,
    ), result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# Official Cityscapes AP: dcl evaluate --cityscapes-root vs cityscapesscripts run directly
# ------------------------------------------------------------------------------------------


def predictions_for(coco, seed=0):
    """Shifted copies of the GT, some with a wrong class, plus false positives, as COCO results."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in coco["annotations"]:
        image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
        mask = mask_utils.decode(
            mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            if isinstance(ann["segmentation"], list)
            else ann["segmentation"]
        )
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        for _ in range(2):
            shifted = np.roll(mask, tuple(int(v) for v in rng.integers(-4, 5, 2)), axis=(0, 1))
            category = ann["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 9))
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": category,
                    "score": round(float(rng.random()), 4),
                    "segmentation": encode(shifted),
                }
            )
    for image in coco["images"]:
        box = np.zeros((image["height"], image["width"]), np.uint8)
        box[5:25, 5:45] = 1
        results.append({"image_id": image["id"], "category_id": 3, "score": 0.3, "segmentation": encode(box)})
    return results


def cityscapesscripts_direct(root, coco, results, work, monkeypatch):
    """The reference: our own writer of cityscapesscripts' result format, then its evaluation."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval

    # The two numpy-2 incompatibilities of cityscapesscripts 2.3 (np.in1d is gone; its JSON dump
    # of matches.json cannot write numpy integers), patched for this test only.
    monkeypatch.setattr(np, "in1d", lambda a, b: np.isin(np.ravel(a), b), raising=False)
    monkeypatch.setattr(cs_eval, "writeDict2JSON", lambda data, path: None)
    monkeypatch.chdir(work)
    label_of = {c["id"]: c["cityscapes_label_id"] for c in coco["categories"]}
    prediction_files, gt_files = [], []
    for image in coco["images"]:
        city, name = image["file_name"].split("/")
        stem = name.replace("_leftImg8bit.png", "")
        gt_files.append(str(root / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png"))
        lines = []
        for k, r in enumerate(p for p in results if p["image_id"] == image["id"]):
            Image.fromarray(mask_utils.decode(r["segmentation"]) * 255).save(work / f"{stem}_m{k}.png")
            lines.append(f"{stem}_m{k}.png {label_of[r['category_id']]} {r['score']}\n")
        (work / f"{stem}_pred.txt").write_text("".join(lines))
        prediction_files.append(str(work / f"{stem}_pred.txt"))
    args = copy.copy(cs_eval.args)
    args.predictionPath, args.predictionWalk = str(work), None
    args.gtInstancesFile = str(work / "gtInstances.json")
    args.JSONOutput, args.quiet, args.colorized = False, True, False
    averages = cs_eval.evaluateImgLists(prediction_files, gt_files, args)["averages"]
    return averages


def _percent(value):
    return None if np.isnan(value) else 100 * value


def check_against_cityscapesscripts(root, gt_path, tmp_path, monkeypatch, workers=1):
    coco = json.loads(gt_path.read_text())
    results = predictions_for(coco)
    ours = evaluate(gt_path, results, cityscapes_root=root, split="val", workers=workers)["cityscapes"]
    work = tmp_path / "direct"
    work.mkdir()
    expected = cityscapesscripts_direct(root, coco, results, work, monkeypatch)
    assert ours["AP"] == pytest.approx(100 * expected["allAp"], abs=1e-9)
    assert ours["AP50"] == pytest.approx(100 * expected["allAp50%"], abs=1e-9)
    assert set(ours["per_class"]) == set(expected["classes"])
    for name, values in expected["classes"].items():
        assert ours["per_class"][name]["AP"] == pytest.approx(_percent(values["ap"]), abs=1e-9)
        assert ours["per_class"][name]["AP50"] == pytest.approx(_percent(values["ap50%"]), abs=1e-9)
    return ours


def test_cityscapes_ap_equals_cityscapesscripts(cityscapes_root, tmp_path, monkeypatch):
    gt_path = tmp_path / "gt.json"
    cityscapes_to_coco(cityscapes_root, "val", gt_path, segmentation="polygon")
    ours = check_against_cityscapesscripts(cityscapes_root, gt_path, tmp_path, monkeypatch)
    assert 0 < ours["AP"] < 100
    assert list(tmp_path.glob("*.json")) == [gt_path]  # nothing left behind


def test_cityscapes_ap_in_worker_processes_equals_cityscapesscripts(cityscapes_root, tmp_path, monkeypatch):
    """Images matched in 2 worker processes (dcl evaluate -j 2): the same numbers, nothing left behind."""
    gt_path = tmp_path / "gt.json"
    cityscapes_to_coco(cityscapes_root, "val", gt_path, segmentation="polygon")
    before = set(tmp_path.rglob("*"))
    ours = check_against_cityscapesscripts(cityscapes_root, gt_path, tmp_path, monkeypatch, workers=2)
    assert 0 < ours["AP"] < 100
    assert (
        ours
        == evaluate(gt_path, predictions_for(json.loads(gt_path.read_text())), cityscapes_root=cityscapes_root)[
            "cityscapes"
        ]
    )
    assert not [p for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(tmp_path / "direct")]


@pytest.mark.e2e
def test_cityscapes_ap_on_toy_data(tmp_path, monkeypatch):
    from dcl.data.toydata import generate_toy_datasets

    generate_toy_datasets(tmp_path / "toy", num_train=1, num_val=3)
    root = tmp_path / "toy" / "cityscapes"
    gt_path = tmp_path / "gt.json"
    cityscapes_to_coco(root, "val", gt_path)
    ours = check_against_cityscapesscripts(root, gt_path, tmp_path, monkeypatch)
    assert ours["AP"] is not None


def test_perfect_predictions_score_100(cityscapes_root, tmp_path):
    coco = cityscapes_to_coco(cityscapes_root, "val", None)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "segmentation": a["segmentation"]}
        for a in coco["annotations"]
        if not a["iscrowd"]
    ]
    result = evaluate(coco, results, cityscapes_root=cityscapes_root)["cityscapes"]
    assert result["AP"] == 100.0 and result["AP50"] == 100.0
    assert result["per_class"]["car"]["AP"] == 100.0 and result["per_class"]["bus"]["AP"] is None


def test_missing_cityscapes_gt_is_an_input_error(cityscapes_root, tmp_path):
    coco = cityscapes_to_coco(cityscapes_root, "val", None)
    coco["images"][0]["file_name"] = "nowhere/nowhere_000000_000000_leftImg8bit.png"
    with pytest.raises(InputError, match="has no Cityscapes GT"), pytest.warns(UserWarning, match="no detections"):
        evaluate(coco, [], cityscapes_root=cityscapes_root)


# ------------------------------------------------------------------------------------------
# --style detectron: the GT Detectron's convert_cityscapes_to_coco.py wrote, against the rules
# written out here with scipy's connected components (not OpenCV's contours)
# ------------------------------------------------------------------------------------------


def _detectron_rules(ids: np.ndarray) -> list[tuple[int, int, np.ndarray, list[np.ndarray]]]:
    """(category, instance id, mask, external pieces) of every instance Detectron's converter keeps.

    Only instance ids (>= 1000) of the 8 classes; the pieces are the 8-connected components that
    no other component of the same instance encloses (what external contours trace); an instance
    with a piece of 1 or 2 pixels (a contour of <= 2 points, <= 4 coordinates) is dropped."""
    from scipy import ndimage

    kept = []
    for value in sorted(set(ids.ravel().tolist())):
        if value < 1000 or value // 1000 not in CATEGORY_OF_LABEL:
            continue
        mask = ids == value
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        pieces = [labels == k for k in range(1, count + 1)]
        filled = [ndimage.binary_fill_holes(p) for p in pieces]
        external = [p for i, p in enumerate(pieces) if not any(j != i and (filled[j] & p).any() for j in range(count))]
        if min(p.sum() for p in external) <= 2:
            continue
        kept.append((CATEGORY_OF_LABEL[value // 1000], value, mask, external))
    return kept


@pytest.fixture(scope="module")
def toy_cityscapes(tmp_path_factory):
    from dcl.data.toydata import generate_toy_datasets

    out = tmp_path_factory.mktemp("toy")
    generate_toy_datasets(out, num_train=1, num_val=8)
    return out / "cityscapes"


def test_toy_cityscapes_has_group_regions_and_fragmented_instances(toy_cityscapes):
    """What makes the Detectron-style test meaningful: regions without instance id, and instances
    whose visible mask has a separate fragment of 1-2 pixels."""
    from scipy import ndimage

    groups = fragments = 0
    for path in sorted((toy_cityscapes / "gtFine" / "val").glob("*/*_gtFine_instanceIds.png")):
        ids = np.array(Image.open(path)).astype(np.int64)
        groups += sum(1 for v in np.unique(ids) if v in CATEGORY_OF_LABEL)
        for value in np.unique(ids[ids >= 1000]):
            labels, count = ndimage.label(ids == value, structure=np.ones((3, 3)))
            fragments += count > 1 and min(np.bincount(labels.ravel())[1:]) <= 2
    assert groups >= 1 and fragments >= 2, (groups, fragments)


def assert_detectron_style(root: Path, detectron: dict, default: dict) -> tuple[int, int]:
    """Each image's Detectron-style annotations against :func:`_detectron_rules` of its
    instanceIds PNG; (instances dropped, crowd regions of the default style)."""
    dropped = crowd_in_default = 0
    for image in detectron["images"]:
        city, name = image["file_name"].split("/")
        ids = np.array(
            Image.open(root / "gtFine" / "val" / city / name.replace("_leftImg8bit.png", "_gtFine_instanceIds.png"))
        ).astype(np.int64)
        expected = _detectron_rules(ids)
        anns = [a for a in detectron["annotations"] if a["image_id"] == image["id"]]
        default_anns = [a for a in default["annotations"] if a["image_id"] == image["id"]]
        crowd_in_default += sum(a["iscrowd"] for a in default_anns)
        dropped += sum(1 for a in default_anns if not a["iscrowd"]) - len(expected)
        assert len(anns) == len(expected)
        for ann, (category, _value, mask, external) in zip(anns, expected):
            ys, xs = np.nonzero(mask)
            assert (ann["category_id"], ann["iscrowd"], ann["area"]) == (category, 0, mask.sum())
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            # One polygon per external piece, through that piece's pixels, every step to an
            # 8-neighbour (no approximation).
            assert len(ann["segmentation"]) == len(external)
            traced = set()
            for polygon in ann["segmentation"]:
                points = np.array(polygon).reshape(-1, 2)
                piece = [k for k, p in enumerate(external) if p[points[0, 1], points[0, 0]]]
                assert len(piece) == 1 and external[piece[0]][points[:, 1], points[:, 0]].all()
                steps = np.abs(points - np.roll(points, 1, axis=0)).max(1)
                assert len(points) == 1 or steps.max() == 1
                traced.add(piece[0])
            assert traced == set(range(len(external)))
    return dropped, crowd_in_default


def test_detectron_style_on_holes_and_pieces_inside_holes(tmp_path):
    """A car that is a ring with a piece of itself inside its hole, and another car inside that
    hole: Detectron's converter traces external contours only, so the ring is one polygon (its
    outline: neither the hole's edge nor the enclosed piece), the inner car its own."""
    ids = np.zeros((64, 80), dtype=np.uint16)  # as Cityscapes stores them (16-bit PNG)
    ids[8:56, 8:72] = 26001
    ids[16:48, 16:64] = 0  # the hole
    ids[20:26, 20:30] = 26001  # a piece of the ring's car inside the hole
    ids[30:44, 36:58] = 26002  # another car inside the hole
    ids[34:40, 42:50] = 26001  # and a piece of the first car inside the second's hole
    folder = tmp_path / "gtFine" / "val" / "lindau"
    folder.mkdir(parents=True)
    Image.fromarray(ids).save(folder / "lindau_000000_000019_gtFine_instanceIds.png")
    default = cityscapes_to_coco(tmp_path, "val", None)
    detectron = cityscapes_to_coco(tmp_path, "val", None, style="detectron")
    assert_detectron_style(tmp_path, detectron, default)
    ring, inner = detectron["annotations"]
    assert len(ring["segmentation"]) == 1 and len(inner["segmentation"]) == 1
    assert ring["area"] == (ids == 26001).sum() and ring["bbox"] == [8, 8, 64, 48]


def test_detectron_style_follows_detectrons_rules(toy_cityscapes, tmp_path):
    default = cityscapes_to_coco(toy_cityscapes, "val", None)
    out = tmp_path / "detectron.json"
    assert (
        main(
            [
                "data",
                "cityscapes-to-coco",
                str(toy_cityscapes),
                "--split",
                "val",
                "--style",
                "detectron",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    detectron = json.loads(out.read_text())
    # One predictions file scores against both: the same images and categories.
    assert detectron["images"] == default["images"]
    assert detectron["categories"] == default["categories"]
    assert [a["id"] for a in detectron["annotations"]] == list(range(1, len(detectron["annotations"]) + 1))
    dropped, crowd_in_default = assert_detectron_style(toy_cityscapes, detectron, default)
    assert dropped >= 2 and crowd_in_default >= 1  # the differences the test is about occurred
    with pytest.raises(InputError, match="--segmentation applies to --style default only"):
        from dcl.data.datasets import _run_convert

        _run_convert(
            argparse.Namespace(
                root=str(toy_cityscapes),
                split="val",
                output=str(tmp_path / "x.json"),
                style="detectron",
                segmentation="polygon",
            )
        )
    assert not (tmp_path / "x.json").exists()
