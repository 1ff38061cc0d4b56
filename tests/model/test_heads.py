"""dcl.model.heads: config keys, the DCL mask head and RoI heads inside detectron2 models."""

import pytest

import dcl.compat  # noqa: F401  (before detectron2)
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.utils.flop_counter import FlopCounterMode

from dcl.model.heads import ContrastConvUpsampleHead, ContrastRoIHeads, add_dcl_config, check_dcl_config
from dcl.training.config import load_config
from model_fixtures import PROJ_KEYS, make_heads, training_instances
from toy_training import DCL_HEADS
from toy_training import TOY_COCO as TOY_CONFIG


# --------------------------------------------------------------------------- config


def test_add_dcl_config_adds_exactly_the_six_published_keys():
    cfg = add_dcl_config(get_cfg())
    assert dict(cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS) == {
        "LOSS_WEIGHT": 1.2,
        "NUM_SAMPLES": 32,
        "TEMPERATURE": 0.07,
        "WITH_PROJ": True,
        "MAX_INSTANCES": 100,
        "LOSS_FUNC": "dense_contrast_loss",
    }
    cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT = 0.1
    add_dcl_config(cfg)  # a second call keeps values already set
    assert cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT == 0.1


def test_unknown_dcl_keys_and_loss_functions_fail_clearly():
    cfg = add_dcl_config(get_cfg())
    with pytest.raises((KeyError, AssertionError), match="Non-existent key: MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMP"):
        cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMP", "0.1"])
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_FUNC", "infonce"])
    with pytest.raises(ValueError, match="LOSS_FUNC 'infonce' is unknown; known: dense_contrast_loss"):
        check_dcl_config(cfg)
    cfg.merge_from_file(TOY_CONFIG)
    cfg.merge_from_list(DCL_HEADS)
    with pytest.raises(ValueError, match="LOSS_FUNC 'infonce' is unknown"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, ok",
    [
        ("NUM_SAMPLES", 1, True),
        ("NUM_SAMPLES", 0, False),
        ("MAX_INSTANCES", 0, True),
        ("MAX_INSTANCES", -1, False),
        ("LOSS_WEIGHT", 0.0, True),
        ("LOSS_WEIGHT", -0.1, False),
    ],
)
def test_dcl_value_ranges_are_checked_at_their_boundaries_and_name_the_key(key, value, ok):
    cfg = add_dcl_config(get_cfg())
    cfg.merge_from_list([f"MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.{key}", str(value)])
    if ok:
        check_dcl_config(cfg)
    else:
        with pytest.raises(ValueError, match=f"^MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.{key} {value!r} is out of range$"):
            check_dcl_config(cfg)


# --------------------------------------------------------------------------- the head alone


@pytest.mark.parametrize("polygons", [False, True])
def test_training_returns_both_losses_and_logs_roi_counts(polygons):
    plain, ours = make_heads()
    plain.train()
    ours.train()
    instances = training_instances(polygons=polygons)
    x = torch.randn(7, 16, 14, 14, generator=torch.Generator().manual_seed(1))
    with EventStorage() as storage:
        losses = ours(x, instances)
        plain_losses = plain(x, instances)
        logged = {k: v[0] for k, v in storage.latest().items()}
    assert set(losses) == {"loss_mask", "loss_contrast"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_contrast"] > 0
    torch.testing.assert_close(losses["loss_mask"], plain_losses["loss_mask"])  # loss_mask unchanged
    # Valid RoIs, counted here from the 28x28 GT crops with the paper's rule.
    crops = torch.cat([i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, 28) for i in instances])
    areas = crops.flatten(1).sum(1)
    assert logged["dcl/num_rois"] == 7
    assert logged["dcl/num_valid_rois"] == int(((areas > 32) & (areas < 28 * 28 - 32)).sum()) > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())


def test_training_uses_only_the_first_max_instances_rois_across_images():
    _, ours = make_heads(contrast_max_instances=5)
    ours.train()
    x = torch.randn(7, 16, 14, 14)
    with EventStorage() as storage:
        ours(x, training_instances(counts=(4, 3)))
        assert storage.latest()["dcl/num_rois"][0] == 5


def test_training_stops_at_max_instances_inside_the_first_image():
    _, ours = make_heads(contrast_max_instances=3)
    ours.train()
    x = torch.randn(7, 16, 14, 14)
    with EventStorage() as storage:
        losses = ours(x, training_instances(counts=(4, 3)))
        assert storage.latest()["dcl/num_rois"][0] == 3
    assert torch.isfinite(losses["loss_contrast"])


def test_training_without_foreground_rois_keeps_a_zero_loss_with_gradients():
    _, ours = make_heads()
    ours.train()
    empty = training_instances(counts=(0,))
    with EventStorage():
        losses = ours(torch.zeros(0, 16, 14, 14, requires_grad=True), empty)
    assert losses["loss_contrast"].item() == 0.0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in ours.contrast_loss.parameters())


@pytest.mark.parametrize("with_proj", [True, False])
def test_inference_is_identical_to_the_plain_head_and_costs_nothing_extra(with_proj):
    plain, ours = make_heads(with_proj=with_proj)
    plain.eval()
    ours.eval()
    x = torch.randn(5, 16, 14, 14, generator=torch.Generator().manual_seed(2))

    def predict(head):
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.rand(5, 4) * 32)
        inst.pred_classes = torch.tensor([0, 2, 1, 1, 0])
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            head(x, [inst])
        return inst.pred_masks, flops.get_total_flops()

    contrast_calls = []
    ours.contrast_loss.register_forward_hook(lambda *args: contrast_calls.append(1))
    plain_masks, plain_flops = predict(plain)
    our_masks, our_flops = predict(ours)
    assert torch.equal(our_masks, plain_masks)
    assert our_flops == plain_flops > 0
    assert contrast_calls == []  # the DCL term (and its projection) never runs at inference
    assert len(list(ours.contrast_loss.parameters())) == (4 if with_proj else 0)


def test_parameter_names_are_the_original_implementations():
    _, ours = make_heads()
    assert PROJ_KEYS <= set(ours.state_dict())


# --------------------------------------------------------------------------- whole models


def toy_model(*extra):
    cfg = load_config(TOY_CONFIG, ["INPUT.MASK_FORMAT", "bitmask", *extra])
    torch.manual_seed(0)
    return build_model(cfg)


def toy_batch(seed=0, size=96):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(2):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        boxes = []
        for i in range(3):
            x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(16, size // 2, (2,), generator=g).tolist()
            masks[i, y0 : y0 + h, x0 : x0 + w] = True
            image[:, y0 : y0 + h, x0 : x0 + w] = 60.0 * (i + 1)
            boxes.append([x0, y0, x0 + w, y0 + h])
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor([0, 1, 2])
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def test_dcl_model_passes_ground_truth_to_the_mask_head_and_trains():
    model = toy_model(*DCL_HEADS)
    assert isinstance(model.roi_heads, ContrastRoIHeads)
    assert isinstance(model.roi_heads.mask_head, ContrastConvUpsampleHead)
    seen = {}
    original = model.roi_heads.mask_head.forward

    def spy(x, instances, targets=None):
        seen["targets"] = targets
        return original(x, instances, targets)

    model.roi_heads.mask_head.forward = spy
    batch = toy_batch()
    model.train()
    with EventStorage():
        losses = model(batch)
    assert {"loss_mask", "loss_contrast", "loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert [len(t) for t in seen["targets"]] == [3, 3]
    assert torch.equal(seen["targets"][0].gt_classes, batch[0]["instances"].gt_classes)


def test_contrast_roi_heads_with_the_plain_mask_head_is_the_baseline():
    model = toy_model("MODEL.ROI_HEADS.NAME", "ContrastRoIHeads")
    model.train()
    with EventStorage():
        losses = model(toy_batch())
    assert "loss_mask" in losses and "loss_contrast" not in losses


def test_dcl_model_predicts_exactly_what_the_baseline_predicts_with_the_same_weights():
    baseline = toy_model()
    dcl_model = toy_model(*DCL_HEADS)
    assert type(baseline.roi_heads) is StandardROIHeads
    incompatible = dcl_model.load_state_dict(baseline.state_dict(), strict=False)
    assert {k.rsplit("mask_head.", 1)[1] for k in incompatible.missing_keys} == PROJ_KEYS
    baseline.eval()
    dcl_model.eval()
    inputs = [{k: v for k, v in item.items() if k != "instances"} for item in toy_batch(seed=3)]
    with torch.no_grad():
        expected = baseline(inputs)
        got = dcl_model(inputs)
    for a, b in zip(expected, got):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_masks, b.pred_masks)


# --------------------------------------------------------------------------- DCL's value and gradient path


def test_loss_contrast_is_the_loss_module_on_post_relu_deconv_features_and_28x28_gt_crops():
    from dcl.model.loss import DenseContrastiveLoss

    _, ours = make_heads()
    ours.train()
    instances = training_instances()
    x = torch.randn(7, 16, 14, 14, generator=torch.Generator().manual_seed(1), requires_grad=True)
    hooked = {}
    ours.deconv_relu.register_forward_hook(lambda module, args, out: hooked.setdefault("features", out))
    torch.manual_seed(5)
    with EventStorage():
        losses = ours(x, instances)
    features = hooked["features"]
    assert features.shape == (7, 16, 28, 28) and (features >= 0).all()
    # The GT crops, made here from the full-image masks and the proposal boxes (detectron2's cropping).
    crops = torch.cat([i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, 28) for i in instances])
    reference = DenseContrastiveLoss(
        16, loss_weight=1.2, num_samples=32, temperature=0.07, with_proj=True, max_instances=100
    )
    reference.load_state_dict(ours.contrast_loss.state_dict())
    torch.manual_seed(5)
    expected = reference(features.detach(), crops)
    assert expected.num_valid_rois > 0
    torch.testing.assert_close(losses["loss_contrast"], expected.loss)
    # The gradient path: every mask-head conv, the deconvolution and the head's input (the
    # backbone's pooled features) get a non-zero gradient from loss_contrast alone.
    losses["loss_contrast"].backward()
    for name in ("mask_fcn1", "mask_fcn2", "deconv"):
        assert getattr(ours, name).weight.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0
    assert ours.predictor.weight.grad is None  # the predictor is after the DCL features


def toy_step_gradients(*extra):
    """One toy training step: (gradient of loss_contrast alone, gradient of all losses) per parameter."""
    model = toy_model(*DCL_HEADS, *extra)
    model.train()
    torch.manual_seed(1)
    with EventStorage():
        losses = model(toy_batch())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    contrast = torch.autograd.grad(losses["loss_contrast"], list(params.values()), retain_graph=True, allow_unused=True)
    total = torch.autograd.grad(sum(losses.values()), list(params.values()), allow_unused=True)
    zero = lambda g, p: torch.zeros_like(p) if g is None else g  # noqa: E731
    return (
        {n: zero(g, p) for (n, p), g in zip(params.items(), contrast)},
        {n: zero(g, p) for (n, p), g in zip(params.items(), total)},
    )


def test_toy_training_step_dcl_gradient_reaches_head_and_backbone_and_vanishes_at_weight_zero():
    contrast, total = toy_step_gradients()
    head = "roi_heads.mask_head."
    for name in (f"{head}mask_fcn1.weight", f"{head}deconv.weight"):
        assert contrast[name].abs().sum() > 0, name
    backbone = [n for n in contrast if n.startswith("backbone.")]
    assert backbone and all(contrast[n].abs().sum() > 0 for n in backbone if "bottom_up" in n), backbone
    assert contrast[f"{head}predictor.weight"].abs().sum() == 0
    # LOSS_WEIGHT 0: the step's gradients are exactly those without the DCL contribution.
    contrast0, total0 = toy_step_gradients("MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT", "0.0")
    changed = 0
    for name in total:
        assert contrast0[name].abs().sum() == 0, name
        # float32 sums in another order: tolerance relative to the gradient's scale
        scale = float(total[name].abs().max()) + 1e-12
        torch.testing.assert_close(total0[name], total[name] - contrast[name], rtol=1e-3, atol=1e-3 * scale)
        changed += bool((contrast[name] != 0).any())
    assert changed > 0
