"""dcl evaluate: both backends equal pycocotools' COCOeval run directly on the same files."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from dcl.data.coco import load_ground_truth
from dcl.evaluation.evaluate import EMPTY_GT_WARNING, CocoEvaluator, evaluate, usable_cpus
from dcl.io import InputError
from instance_fixtures import (
    assert_stats_close,
    coco_stats,
    encode,
    make_cases,
    make_random,
    merge_datasets,
    rect,
    run_dcl,
)


def pycocotools_direct(gt_path, predictions_path, iou_type, drop_bbox):
    """The reference: pycocotools on the files, as its README shows (no dcl code involved)."""
    results = json.loads(open(predictions_path).read())
    if drop_bbox:
        for r in results:
            r.pop("bbox", None)
    return coco_stats(COCO(str(gt_path)), results, iou_type)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    gt, predictions = merge_datasets(make_cases(), make_random(3, num_images=20), make_random(4, num_images=20))
    directory = tmp_path_factory.mktemp("eval")
    (directory / "gt.json").write_text(json.dumps(gt))
    (directory / "pred.json").write_text(json.dumps(predictions))
    return directory / "gt.json", directory / "pred.json"


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_segm_and_bbox_equal_pycocotools_direct(files, backend):
    gt_path, predictions_path = files
    # Box AP needs every detection to have a box; the fixtures leave some out on purpose.
    predictions = json.loads(predictions_path.read_text())
    with_boxes = predictions_path.with_name("pred_boxes.json")
    with_boxes.write_text(json.dumps([p for p in predictions if "bbox" in p]))
    result = evaluate(gt_path, with_boxes, iou_types=["segm", "bbox"], backend=backend)
    assert result["backend"] == backend and result["num_predictions"] == len(json.loads(with_boxes.read_text()))
    assert_stats_close(result["segm"], pycocotools_direct(gt_path, with_boxes, "segm", drop_bbox=True), 1e-6)
    assert_stats_close(result["bbox"], pycocotools_direct(gt_path, with_boxes, "bbox", drop_bbox=False), 1e-6)
    assert 0 < result["segm"]["AP"] < 100


def test_backends_agree(files):
    gt_path, predictions_path = files
    a = evaluate(gt_path, predictions_path, backend="pycocotools")
    b = evaluate(gt_path, predictions_path, backend="faster-coco-eval")
    assert "bbox" not in a  # not every detection has a box: masks only by default
    assert_stats_close(a["segm"], b["segm"], 1e-6)


def test_mask_ap_uses_mask_areas(tmp_path):
    # An unmatched L-shaped detection: mask area 30 (small), box area 20x20 = 400 ... and a second
    # scene scaled so the box is "medium" (> 32^2) while the mask is "small": only the mask area
    # puts it among the small detections' false positives.
    H, W = 80, 80
    gt = {
        "images": [{"id": 1, "height": H, "width": W}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": encode(rect(H, W, 0, 0, 20, 20)),
                "area": 400.0,
                "bbox": [0, 0, 20, 20],
                "iscrowd": 0,
            }
        ],
    }
    l_shape = rect(H, W, 40, 40, 42, 79) | rect(H, W, 40, 40, 79, 42)
    predictions = [
        {
            "image_id": 1,
            "category_id": 1,
            "segmentation": encode(rect(H, W, 0, 0, 20, 20)),
            "bbox": [0, 0, 20, 20],
            "score": 0.5,
        },
        {"image_id": 1, "category_id": 1, "segmentation": encode(l_shape), "bbox": [40, 40, 39, 39], "score": 0.9},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    result = evaluate(tmp_path / "gt.json", tmp_path / "pred.json", iou_types=["segm"])
    with_mask_area = pycocotools_direct(tmp_path / "gt.json", tmp_path / "pred.json", "segm", drop_bbox=True)
    with_box_area = pycocotools_direct(tmp_path / "gt.json", tmp_path / "pred.json", "segm", drop_bbox=False)
    assert_stats_close(result["segm"], with_mask_area, 1e-9)
    assert with_mask_area["APs"] != with_box_area["APs"]


def test_empty_predictions_give_zero_with_warning(files):
    gt_path, _ = files
    for backend in ("pycocotools", "faster-coco-eval"):
        with pytest.warns(UserWarning, match="no detections"):
            result = evaluate(gt_path, [], backend=backend)
        assert result["warnings"] and result["num_predictions"] == 0
        assert result["segm"]["AP"] == 0.0 and result["segm"]["AR100"] == 0.0
        assert result["segm"]["APl"] is None  # the fixtures have no large GT


def test_evaluator_does_not_modify_inputs(files):
    gt_path, predictions_path = files
    gt = json.loads(gt_path.read_text())
    predictions = json.loads(predictions_path.read_text())
    before = json.dumps([gt, predictions])
    evaluate(gt, predictions, backend="pycocotools")
    evaluate(gt, predictions, backend="faster-coco-eval")
    assert json.dumps([gt, predictions]) == before


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda gt: gt.pop("images"), r"needs a list 'images'"),
        (lambda gt: gt["annotations"][1].update(category_id=9), r"annotations\[1\] \(id 2\): category_id 9 is not in"),
        (lambda gt: gt["annotations"][2].update(id=1), r"annotations\[2\] \(id 1\): duplicate annotation id"),
        (
            lambda gt: gt["annotations"][0].pop("area"),
            r"annotations\[0\] \(id 1\): needs a non-negative numeric 'area'",
        ),
        (
            lambda gt: gt["annotations"][0].update(segmentation=encode(np.zeros((5, 5), bool))),
            r"annotations\[0\] \(id 1\): mask size 5x5",
        ),
    ],
)
def test_invalid_gt_is_named(change, message):
    gt, predictions = make_cases()
    change(gt)
    with pytest.raises(InputError, match=message):
        evaluate(gt, predictions)


def test_results_and_gt_swapped_is_explained(files):
    gt_path, predictions_path = files
    with pytest.raises(InputError, match="looks like a results file"):
        load_ground_truth(predictions_path)
    with pytest.raises(InputError, match="looks like a GT file"):
        evaluate(gt_path, gt_path)


def test_box_ap_requires_boxes_when_asked():
    gt, predictions = make_cases()
    with pytest.raises(InputError, match=r"record 10 \(image_id 7\): missing 'bbox'"):
        evaluate(gt, predictions, iou_types=["bbox"])


def test_cli_writes_eval_json(files, tmp_path):
    gt_path, predictions_path = files
    out = tmp_path / "eval.json"
    result = run_dcl("evaluate", predictions_path, "-a", gt_path, "--backend", "pycocotools", "-o", out)
    assert result.returncode == 0, result.stderr
    written = json.loads(out.read_text())
    assert set(written) == {
        "gt",
        "predictions",
        "backend",
        "num_images",
        "num_predictions",
        "warnings",
        "segm",
        "predictions_gt",
    }
    assert written["gt"] == str(gt_path) and written["num_images"] == 47
    assert_stats_close(written["segm"], pycocotools_direct(gt_path, predictions_path, "segm", True), 1e-9)
    assert "segm" in result.stdout and "AP50" in result.stdout


def test_cli_rejects_unknown_image_ids(files, tmp_path):
    gt_path, predictions_path = files
    predictions = json.loads(predictions_path.read_text())
    predictions[3]["image_id"] = 12345
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(predictions))
    result = run_dcl("evaluate", bad, "-a", gt_path)
    assert result.returncode == 1
    assert "bad.json" in result.stderr and "record 3: image_id 12345 is not in the GT file" in result.stderr


def test_evaluator_reuses_its_gt_index(files):
    gt_path, predictions_path = files
    gt = load_ground_truth(gt_path)
    evaluator = CocoEvaluator(gt, "segm", "faster-coco-eval")
    from dcl.data.coco import load_predictions

    records = load_predictions(predictions_path, gt)
    assert evaluator(records) == evaluator(records)
    assert evaluator(records[: len(records) // 2]) != evaluator(records)


def test_modules_import_neither_torch_nor_detectron2():
    code = (
        "import sys, dcl.data.coco, dcl.evaluation.evaluate, dcl.evaluation.errors, dcl.data.cityscapes; "
        "print('torch' in sys.modules, 'detectron2' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- hostile input
def small_case():
    """One 10x10 image, one square GT polygon, one detection of it."""
    square = [[2, 2, 7, 2, 7, 7, 2, 7]]
    gt = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": square,
                "area": 25.0,
                "bbox": [2, 2, 5, 5],
                "iscrowd": 0,
            }
        ],
    }
    predictions = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": square}]
    return gt, predictions


FAR = [[0, 0, 4e8, 0, 4e8, 4e8]]  # made pycocotools segfault or run out of memory


@pytest.mark.parametrize("command", ["evaluate", "errors"])
@pytest.mark.parametrize(
    "change, output, message",
    [
        (
            lambda gt, p: gt["annotations"][0].update(segmentation=FAR),
            None,
            r"gt.json: 1 invalid record\(s\):\n  annotations\[0\] \(id 1\): polygon coordinates \(x 0\.\.4e\+08, y 0\.\.4e\+08\) "
            r"lie far outside the 10x10 image",
        ),
        (
            lambda gt, p: p[0].update(segmentation=FAR),
            None,
            r"record 0 \(image_id 1\): polygon coordinates .* lie far outside",
        ),
        (lambda gt, p: "3", None, "pred.json: a COCO results file must be a JSON list of detections, got a number"),
        (lambda gt, p: "null", None, "must be a JSON list of detections, got null"),
        (lambda gt, p: '"pred.json"', None, "must be a JSON list of detections, got a string"),
        (lambda gt, p: None, "outdir", r"output \S*outdir is a directory; name a file"),
        (lambda gt, p: gt["annotations"][0].update(area=-25.0), None, r"\(id 1\): needs a non-negative numeric 'area'"),
        (
            lambda gt, p: gt["annotations"][0].update(bbox=[2, 2, -5, 5]),
            None,
            r"'bbox' must be \[x, y, width, height\] with width, height >= 0",
        ),
    ],
)
def test_hostile_input_is_one_error_and_writes_nothing(tmp_path, command, change, output, message):
    gt, predictions = small_case()
    text = change(gt, predictions)  # the predictions file's text, or None: the changed list
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(text if text is not None else json.dumps(predictions))
    (tmp_path / "outdir").mkdir()
    out = tmp_path / (output or "out.json")
    result = subprocess.run(
        [sys.executable, "-m", "dcl", command, "pred.json", "-a", "gt.json", "-o", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and re.search(message, result.stderr), result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "outdir", "pred.json"]
    assert not list((tmp_path / "outdir").iterdir())


@pytest.mark.parametrize("command, parallel", [("evaluate", "--threads"), ("errors", "--workers")])
def test_gt_without_annotations_warns_and_many_workers_are_capped(tmp_path, command, parallel):
    gt, predictions = small_case()
    gt["annotations"] = []
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    result = subprocess.run(
        [sys.executable, "-m", "dcl", command, "pred.json", "-a", "gt.json", parallel, "100000", "-o", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"dcl {command}: warning: the GT file has no annotations: AP and AR are undefined (null)" in result.stderr
    assert json.loads((tmp_path / "out.json").read_text())["warnings"] == [EMPTY_GT_WARNING]


def test_worker_counts_are_capped_at_the_usable_cpus():
    from dcl.evaluation import errors
    from dcl.evaluation.evaluate import worker_count

    assert worker_count(100000) == usable_cpus() and worker_count(0) == usable_cpus() and worker_count(1) == 1
    assert errors.worker_count is worker_count  # dcl errors -j and dcl evaluate -j: one rule
