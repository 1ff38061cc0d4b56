"""dcl.compat: the shims are applied only where needed, and missing-extension ops fail clearly."""

import subprocess
import sys

import pytest

import dcl.compat  # noqa: F401  (before detectron2)
import numpy as np
import torch
from PIL import Image

from dcl.compat import APPLIED, MissingExtensionError, has_extension

needs_stand_in = pytest.mark.skipif(has_extension(), reason="detectron2 has its compiled extension")


def test_numpy_and_pillow_aliases_available():
    # detectron2 v0.6 uses these; they must resolve to what they meant before their removal.
    assert np.int is int and np.float is float and np.object is object and np.str is str
    assert Image.LINEAR == Image.Resampling.BILINEAR


def test_model_zoo_configs_resolve():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("mask_rcnn_R_50_FPN_1x.yaml")


@needs_stand_in
def test_rotated_ops_fail_with_build_hint():
    from detectron2.layers import nms_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(MissingExtensionError, match="without its compiled extension"):
        nms_rotated(boxes, torch.ones(1), 0.5)
    with pytest.raises(MissingExtensionError, match="box_iou_rotated"):
        pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes))


@needs_stand_in
def test_deformable_conv_cuda_kernels_fail_with_build_hint():
    from detectron2 import _C
    from detectron2.layers import DeformConv

    # On CPU detectron2 falls back to torchvision's kernel; the CUDA path calls _C.
    conv = DeformConv(2, 2, kernel_size=3, padding=1)
    assert conv(torch.zeros(1, 2, 5, 5), torch.zeros(1, 18, 5, 5)).shape == (1, 2, 5, 5)
    with pytest.raises(MissingExtensionError, match="deform_conv_forward"):
        _ = _C.deform_conv_forward


@needs_stand_in
def test_cpp_coco_evaluator_fails_with_build_hint():
    from pycocotools.coco import COCO

    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}],
    }
    gt.createIndex()
    dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}])
    with pytest.raises(MissingExtensionError, match="InstanceAnnotation"):
        COCOeval_opt(gt, dt, "bbox").evaluate()


@needs_stand_in
def test_stand_in_keeps_import_machinery_working():
    import detectron2._C as stand_in

    # Dunder probes (copy, pickle, inspect, importlib) must see a normal AttributeError.
    assert not hasattr(stand_in, "__path__")
    version = stand_in.get_compiler_version()
    assert version.startswith("not built") and "dcl.compat stand-in" in version, version
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()
    assert "detectron2._C" in APPLIED


def test_shims_apply_before_detectron2_in_fresh_interpreter():
    code = (
        "import dcl.compat, detectron2.modeling, detectron2.evaluation, detectron2.data;"
        "print(','.join(dcl.compat.APPLIED))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    applied = result.stdout.strip().split(",")
    # Only shims the installed packages need: numpy 2 lacks np.int, Pillow >= 10 lacks LINEAR.
    assert ("numpy-aliases" in applied) == (np.__version__ >= "1.24")
    assert ("detectron2._C" in applied) == (not has_extension())
