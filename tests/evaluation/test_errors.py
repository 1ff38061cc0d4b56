"""dcl errors: fixed masks and AP gains equal a dense numpy implementation of the specification.

The reference below is written straight from docs/method.md ("The segmentation-error analysis"):
full-resolution boolean masks, explicit loops, pycocotools only to rasterise GT and to compute AP
(the reference tool). dcl.evaluation.errors works on RLE with vectorised matching; nothing is shared.
"""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dcl.data.coco import STAT_NAMES, complement, rle_counts
from dcl.evaluation.errors import analyze, fix_predictions, parse_error_type
from dcl.io import InputError
from instance_fixtures import (
    assert_stats_close,
    box,
    coco_stats,
    encode,
    make_cases,
    make_random,
    merge_datasets,
    rect,
    run_dcl,
    uncompressed,
)

TYPES = ["fFP", "bFP", "FN", "fFP&bFP", "FN&fFP"]


# ------------------------------------------------------------------------------------------
# The reference: dense masks, loops, the specification's words
# ------------------------------------------------------------------------------------------


def _gt_api(gt):
    api = COCO()
    api.dataset = json.loads(json.dumps(gt))
    api.createIndex()
    return api


def _box_iou(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference_fix(gt, predictions, types, iou_type="segm", legacy=False):
    """{type: list of dense boolean masks, one per prediction}."""
    api = _gt_api(gt)
    masks = [mask_utils.decode(p["segmentation"]).astype(bool) for p in predictions]
    fixed = {t: [m.copy() for m in masks] for t in types}
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd", 0)]
        anns = sorted(anns, key=lambda a: a["category_id"])  # Python's sort is stable
        dets = [k for k, p in enumerate(predictions) if p["image_id"] == image["id"]]
        if not anns or not dets:
            continue  # such images keep their detections unchanged
        gt_masks = [api.annToMask(a).astype(bool) for a in anns]
        union_all = np.zeros_like(gt_masks[0])
        for g in gt_masks:
            union_all |= g
        for k in dets:
            det = masks[k]
            best, best_iou = None, -1.0
            for g, ann in enumerate(anns):
                if ann["category_id"] != predictions[k]["category_id"]:
                    iou = 0.0
                elif iou_type == "segm":
                    union = np.logical_or(det, gt_masks[g]).sum()
                    iou = np.logical_and(det, gt_masks[g]).sum() / union if union else 0.0
                else:
                    det_box = predictions[k].get("bbox") or box(det)
                    iou = _box_iou(det_box, ann["bbox"])
                if iou >= best_iou:  # ">=": a tie goes to the later GT
                    best, best_iou = g, iou
            own = best if best_iou >= 0.1 else (len(anns) - 1 if legacy else None)
            for name in types:
                result = det.copy()
                for kind in name.split("&"):
                    if kind == "bFP":
                        result &= union_all
                    elif own is None:
                        continue
                    elif kind == "fFP":
                        others = np.zeros_like(det)
                        for g, mask in enumerate(gt_masks):
                            if g != own:
                                others |= mask
                        result &= ~(others & ~gt_masks[own])
                    elif kind == "FN":
                        result |= gt_masks[own]
                fixed[name][k] = result
    return fixed


def reference_ap(gt, predictions, masks):
    """pycocotools COCOeval segm stats (percent, None for -1) of the predictions with these masks."""
    results = [
        {"image_id": p["image_id"], "category_id": p["category_id"], "score": p["score"], "segmentation": encode(m)}
        for p, m in zip(predictions, masks)
    ]
    return coco_stats(_gt_api(gt), results, "segm")


@pytest.fixture(scope="module")
def dataset():
    return merge_datasets(make_cases(), make_random(1), make_random(2))


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("legacy", [False, True])
def test_fixed_masks_equal_dense_reference(dataset, iou_type, legacy):
    gt, predictions = dataset
    ours = fix_predictions(gt, predictions, TYPES, iou_type=iou_type, legacy_unmatched=legacy)
    expected = reference_fix(gt, predictions, TYPES, iou_type=iou_type, legacy=legacy)
    for name in TYPES:
        assert len(ours[name]) == len(predictions)
        for k, (record, mask) in enumerate(zip(ours[name], expected[name])):
            assert record["image_id"] == predictions[k]["image_id"]
            np.testing.assert_array_equal(
                mask_utils.decode(record["segmentation"]).astype(bool), mask, err_msg=f"type {name}, prediction {k}"
            )


def test_hand_made_cases_behave_as_specified():
    gt, predictions = make_cases()
    H, W = 20, 24
    default = fix_predictions(gt, predictions, ["fFP", "bFP", "FN"])
    legacy = fix_predictions(gt, predictions, ["fFP", "bFP", "FN"], legacy_unmatched=True)

    def mask(result, k):
        return mask_utils.decode(result[k]["segmentation"]).astype(bool)

    # Image 1, detection 0 spans both touching GT: fFP removes the second GT's pixels.
    first_gt = rect(H, W, 2, 2, 12, 8)
    assert (mask(default["fFP"], 0) == (mask(default["fFP"], 0) & (first_gt | ~_gt_mask(gt, 2)))).all()
    assert not (mask(default["fFP"], 0) & _gt_mask(gt, 2)).any()
    # The crowd region is not a GT instance: bFP removes the detection on it entirely.
    assert not mask(default["bFP"], 2).any()
    # Image 2, detection 4 matches no GT: unchanged by fFP/FN by default ...
    original = rect(H, W, 12, 0, 19, 6)
    assert (mask(default["FN"], 4) == original).all() and (mask(default["fFP"], 4) == original).all()
    # ... while the original tool gives it the image's last GT (category 3, sorted last).
    assert (mask(legacy["FN"], 4) == (original | rect(H, W, 10, 12, 18, 22))).all()
    # Image 3: exact tie between two GT of class 2; the later one is the match.
    assert (mask(default["FN"], 6) == (rect(H, W, 5, 4, 15, 12) | rect(H, W, 5, 10, 15, 16))).all()
    # Images 5 and 6 (no non-crowd GT): unchanged by every type, in both modes.
    for result in (default, legacy):
        for name in ("fFP", "bFP", "FN"):
            assert (mask(result[name], 7) == rect(H, W, 2, 2, 12, 12)).all()
            assert (mask(result[name], 8) == rect(H, W, 4, 4, 8, 8)).all()
    # Image 7: overlapping GT; fFP never removes the detection's own GT pixels.
    assert (mask(default["fFP"], 9) & rect(H, W, 2, 2, 14, 14)).sum() == rect(H, W, 3, 3, 14, 14).sum()


def _gt_mask(gt, annotation_id):
    api = _gt_api(gt)
    return api.annToMask(api.anns[annotation_id]).astype(bool)


# ------------------------------------------------------------------------------------------
# AP
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iou_type,legacy,backend",
    [
        ("segm", False, "faster-coco-eval"),
        ("segm", True, "pycocotools"),
        ("bbox", False, "pycocotools"),
        ("bbox", True, "faster-coco-eval"),
    ],
)
def test_ap_gains_equal_reference(dataset, iou_type, legacy, backend):
    gt, predictions = dataset
    result = analyze(gt, predictions, TYPES, iou_type=iou_type, legacy_unmatched=legacy, backend=backend)
    expected_fixed = reference_fix(gt, predictions, TYPES, iou_type=iou_type, legacy=legacy)
    baseline = reference_ap(gt, predictions, [mask_utils.decode(p["segmentation"]) for p in predictions])
    assert_stats_close(result["baseline"], baseline)
    for name in TYPES:
        fixed = reference_ap(gt, predictions, expected_fixed[name])
        assert_stats_close(result["fixed"][name], fixed)
        for stat in STAT_NAMES:
            if fixed[stat] is not None:
                assert result["delta"][name][stat] == pytest.approx(fixed[stat] - baseline[stat], abs=1e-9)
    assert result["types"] == TYPES and result["iou_type"] == iou_type and result["legacy_unmatched"] is legacy


def test_legacy_mode_changes_fn_gain_and_counts_unmatched(dataset):
    gt, predictions = dataset
    default = analyze(gt, predictions, ["FN"])
    legacy = analyze(gt, predictions, ["FN"], legacy_unmatched=True)
    assert default["baseline"] == legacy["baseline"]
    assert default["delta"]["FN"]["AP"] != legacy["delta"]["FN"]["AP"]
    assert default["num_unmatched"] == legacy["num_unmatched"] > 0


def test_workers_give_the_same_result(dataset):
    gt, predictions = dataset
    one = analyze(gt, predictions, ["fFP", "FN"], workers=1)
    two = analyze(gt, predictions, ["fFP", "FN"], workers=2)
    assert one == two


def test_input_dicts_are_not_modified(dataset):
    gt, predictions = dataset
    before = json.dumps([gt, predictions])
    analyze(gt, predictions, ["fFP&bFP"])
    assert json.dumps([gt, predictions]) == before


# ------------------------------------------------------------------------------------------
# RLE helpers, types, validation, CLI
# ------------------------------------------------------------------------------------------


def test_rle_counts_and_complement_against_dense_masks():
    rng = np.random.default_rng(0)
    masks = [rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random() for _ in range(200)]
    masks += [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((300, 500)) < 0.5]
    decoded = rle_counts([encode(m)["counts"] for m in masks])
    for mask, counts in zip(masks, decoded):
        runs = uncompressed(mask)["counts"]
        assert counts.tolist() == runs
        np.testing.assert_array_equal(mask_utils.decode(complement(encode(mask))).astype(bool), ~mask)


def test_error_type_names():
    assert parse_error_type("fFP&bFP") == ("fFP", "bFP")
    assert parse_error_type("fn") == ("FN",)
    with pytest.raises(InputError, match="unknown error type 'xFP'"):
        parse_error_type("fFP&xFP")
    with pytest.raises(InputError, match="twice"):
        parse_error_type("FN&FN")


def test_empty_predictions_give_zero_ap_with_a_warning():
    gt, _ = make_cases()
    with pytest.warns(UserWarning, match="no detections"):
        result = analyze(gt, [], ["fFP"])
    assert result["baseline"]["AP"] == 0.0 and result["delta"]["fFP"]["AP"] == 0.0
    assert result["warnings"]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("score"), r"record 0 \(image_id 1\): missing 'score'"),
        (lambda d: d.pop("segmentation"), r"record 0 \(image_id 1\): missing 'segmentation'"),
        (lambda d: d.update(image_id=999), r"record 0: image_id 999 is not in the GT file"),
        (lambda d: d.update(category_id=42), r"record 0 \(image_id 1\): category_id 42 is not in the GT"),
        (
            lambda d: d.update(segmentation=encode(np.zeros((10, 24), bool))),
            r"record 0 \(image_id 1\): mask size 10x24 .* disagrees with the image's 20x24",
        ),
        (
            lambda d: d["segmentation"].update(counts=encode(np.zeros((10, 24), bool))["counts"]),
            r"record 0 \(image_id 1\): RLE covers 240 pixels but its image has 480",
        ),
    ],
)
def test_invalid_predictions_are_named(change, message):
    gt, predictions = make_cases()
    predictions = json.loads(json.dumps(predictions))
    change(predictions[0])
    with pytest.raises(InputError, match=message):
        analyze(gt, predictions, ["FN"])


def test_cli_writes_json_and_table(tmp_path, dataset):
    gt, predictions = dataset
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    result = run_dcl(
        "errors",
        str(tmp_path / "pred.json"),
        "-a",
        str(tmp_path / "gt.json"),
        "-t",
        "fFP",
        "fFP&bFP",
        "--legacy-unmatched",
        "-o",
        str(tmp_path / "out" / "errors.json"),
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "out" / "errors.json").read_text())
    expected = json.loads(json.dumps(analyze(gt, predictions, ["fFP", "fFP&bFP"], legacy_unmatched=True)))
    assert written.pop("gt") == str(tmp_path / "gt.json") and expected.pop("gt") is None
    assert written.pop("predictions") == str(tmp_path / "pred.json") and expected.pop("predictions") is None
    assert written.pop("predictions_gt") is None  # val predictions on val: no mapping
    assert written == expected
    assert "fFP&bFP" in result.stdout and "baseline" in result.stdout and "legacy" in result.stdout


def test_cli_reports_truncated_json(tmp_path):
    gt, predictions = make_cases()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions)[:-40])
    result = run_dcl(
        "errors", str(tmp_path / "pred.json"), "-a", str(tmp_path / "gt.json"), "-o", str(tmp_path / "errors.json")
    )
    assert result.returncode == 1
    assert "pred.json: invalid JSON" in result.stderr and "truncated" in result.stderr
    assert not (tmp_path / "errors.json").exists()
