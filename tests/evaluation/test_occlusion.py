"""COCO-OCC: the occlusion subset, scoring val predictions on it by file name, the data check,
and the toy subset. References: the overlap rule and the id mapping written out here, and
pycocotools run on a GT and predictions renumbered by hand."""

from __future__ import annotations

import json

import pytest
from pycocotools.coco import COCO

from dcl.data.coco import load_ground_truth, map_predictions_by_file_name, occlusion_subset
from dcl.data.datasets import check_occlusion_subset
from dcl.io import InputError
from instance_fixtures import assert_stats_close, coco_stats, make_random, run_dcl


def _overlapping(anns, min_overlap):
    """Brute force over pairs of boxes, from the definition."""
    boxes = [a["bbox"] for a in anns if not a.get("iscrowd")]
    for i in range(len(boxes)):
        for j in range(len(boxes)):
            if i == j:
                continue
            (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
            ix = min(x0 + w0, x1 + w1) - max(x0, x1)
            iy = min(y0 + h0, y1 + h1) - max(y0, y1)
            if ix > 0 and iy > 0 and ix * iy >= min_overlap * min(w0 * h0, w1 * h1):
                return True
    return False


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    gt, predictions = make_random(7, num_images=30)
    for image in gt["images"]:
        image["file_name"] = f"val2017/{image['id']:012d}.jpg"
    directory = tmp_path_factory.mktemp("occ")
    (directory / "val.json").write_text(json.dumps(gt))
    (directory / "pred.json").write_text(json.dumps(predictions))
    subset = occlusion_subset(load_ground_truth(gt), 0.2)
    for image in subset["images"]:
        image["file_name"] = image["file_name"].split("/")[-1]  # matched by base name
    (directory / "occ.json").write_text(json.dumps(subset))
    return directory, gt, predictions, subset


def test_subset_holds_exactly_the_occluded_images_renumbered(val):
    _, gt, _, subset = val
    by_image = {i["id"]: [a for a in gt["annotations"] if a["image_id"] == i["id"]] for i in gt["images"]}
    expected = [i for i in gt["images"] if _overlapping(by_image[i["id"]], 0.2)]
    assert 0 < len(expected) < len(gt["images"])
    assert [i["id"] for i in subset["images"]] == list(range(1, len(expected) + 1))
    assert [i["file_name"].split("/")[-1] for i in subset["images"]] == [
        i["file_name"].split("/")[-1] for i in expected
    ]
    assert [a["id"] for a in subset["annotations"]] == list(range(1, len(subset["annotations"]) + 1))
    for new, old in zip(subset["images"], expected):
        kept = [a for a in subset["annotations"] if a["image_id"] == new["id"]]
        assert [(a["segmentation"], a["category_id"], a["area"]) for a in kept] == [
            (a["segmentation"], a["category_id"], a["area"]) for a in by_image[old["id"]]
        ]


def test_val_predictions_scored_on_the_subset_equal_pycocotools_on_renumbered_ids(val):
    directory, gt, predictions, subset = val
    new_id = {
        old["id"]: new["id"]
        for new in subset["images"]
        for old in gt["images"]
        if old["file_name"].endswith("/" + new["file_name"])
    }
    by_hand = [{**p, "image_id": new_id[p["image_id"]]} for p in predictions if p["image_id"] in new_id]
    assert 0 < len(by_hand) < len(predictions)
    mapped = map_predictions_by_file_name(directory / "pred.json", load_ground_truth(gt), load_ground_truth(subset))
    assert mapped == by_hand
    out = directory / "eval_occ.json"
    result = run_dcl(
        "evaluate",
        directory / "pred.json",
        "-a",
        directory / "occ.json",
        "--predictions-gt",
        directory / "val.json",
        "--backend",
        "pycocotools",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert written["num_predictions"] == len(by_hand) and written["predictions_gt"] == str(directory / "val.json")
    # Mask AP ignores boxes (as dcl evaluate does); pycocotools would take them for the areas.
    no_boxes = [{k: v for k, v in p.items() if k != "bbox"} for p in by_hand]
    assert_stats_close(written["segm"], coco_stats(COCO(str(directory / "occ.json")), no_boxes, "segm"), 1e-9)
    errors = run_dcl(
        "errors",
        directory / "pred.json",
        "-a",
        directory / "occ.json",
        "--predictions-gt",
        directory / "val.json",
        "-o",
        directory / "errors_occ.json",
    )
    assert errors.returncode == 0, errors.stderr
    analysis = json.loads((directory / "errors_occ.json").read_text())
    assert analysis["num_predictions"] == len(by_hand)
    assert_stats_close(analysis["baseline"], written["segm"], 1e-9)


def test_a_subset_image_missing_from_val_is_an_input_error(val, tmp_path):
    directory, gt, _, subset = val
    broken = json.loads(json.dumps(subset))
    broken["images"][0]["file_name"] = "not_in_val.jpg"
    (tmp_path / "occ.json").write_text(json.dumps(broken))
    result = run_dcl(
        "evaluate", directory / "pred.json", "-a", tmp_path / "occ.json", "--predictions-gt", directory / "val.json"
    )
    assert result.returncode == 1 and "not_in_val.jpg" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InputError, match="not_in_val.jpg"):
        check_occlusion_subset(tmp_path / "occ.json", directory / "val.json")


def test_data_check_notes_an_absent_subset_and_checks_a_present_one(tmp_path):
    from dcl.data.toydata import generate_toy_datasets

    generate_toy_datasets(tmp_path / "toy", num_train=1, num_val=8)
    occ = tmp_path / "toy" / "coco" / "annotations" / "instances_occ_val.json"
    stamp = tmp_path / "stamp.json"
    result = run_dcl(
        "data",
        "check",
        "--dataset",
        "toy_coco",
        "--root",
        tmp_path,
        "--occlusion-subset",
        tmp_path / "absent.json",
        "-o",
        stamp,
    )
    assert result.returncode == 0, result.stderr
    assert "note: no occlusion subset" in result.stdout
    assert json.loads(stamp.read_text())["occlusion_subset"]["present"] is False
    result = run_dcl(
        "data", "check", "--dataset", "toy_coco", "--root", tmp_path, "--occlusion-subset", occ, "-o", stamp
    )
    assert result.returncode == 0, result.stderr
    subset = json.loads(occ.read_text())
    assert json.loads(stamp.read_text())["occlusion_subset"] == {
        "path": str(occ),
        "present": True,
        "images": len(subset["images"]),
    }
    # The toy subset is the occluded part of the toy val, renumbered.
    val = json.loads((tmp_path / "toy" / "coco" / "annotations" / "instances_val.json").read_text())
    assert 0 < len(subset["images"]) < len(val["images"])
    assert subset == occlusion_subset(load_ground_truth(val), 0.2) | {"info": subset["info"]}
    occ.write_text('{"images": [')
    result = run_dcl("data", "check", "--dataset", "toy_coco", "--root", tmp_path, "--occlusion-subset", occ)
    assert result.returncode == 1 and "instances_occ_val.json" in result.stderr
