"""dcl.model.loss against independent, obviously-correct per-RoI implementations written here.

The references follow docs/method.md ("What the loss does") literally: project and normalise the
whole feature map, loop over RoIs, apply the validity rule, and evaluate
-log(e^s_ij / (e^s_ij + sum_k e^s_ik)) pair by pair in float64.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from dcl.model.loss import (
    LOSS_FUNCTIONS,
    DenseContrastiveLoss,
    dense_contrastive_loss,
    gather_points,
    sample_points,
    valid_roi_mask,
)


# --------------------------------------------------------------------------- references


def reference_roi_loss_pairs(feats_flat, anchor_idx, pos_idx, neg_idx, temperature):
    """One RoI, pair by pair: feats_flat (C, H*W) normalised; *_idx (K,)."""
    anchors, positives, negatives = feats_flat[:, anchor_idx].T, feats_flat[:, pos_idx].T, feats_flat[:, neg_idx].T
    total = 0.0
    for a in anchors:
        negative_sum = sum(torch.exp(torch.dot(a, n) / temperature) for n in negatives)
        for p in positives:
            e_pos = torch.exp(torch.dot(a, p) / temperature)
            total = total - torch.log(e_pos / (e_pos + negative_sum))
    return total / (len(anchors) * len(positives))


def reference_roi_loss_matrix(feats_flat, anchor_idx, pos_idx, neg_idx, temperature):
    """One RoI, the same formula with matrices (for paper-sized K, where the pair loop is slow)."""
    anchors, positives, negatives = feats_flat[:, anchor_idx].T, feats_flat[:, pos_idx].T, feats_flat[:, neg_idx].T
    e_pos = torch.exp(anchors @ positives.T / temperature)  # (Ka, Kp)
    e_neg = torch.exp(anchors @ negatives.T / temperature).sum(dim=1, keepdim=True)  # (Ka, 1)
    return (-torch.log(e_pos / (e_pos + e_neg))).mean()


def reference_module_loss(feats, masks, module, anchor_idx, pos_idx, neg_idx):
    """The DCL term as specified, with the module's projection weights and the given indices
    (one row per valid RoI, in RoI order). Returns (loss, valid RoI list)."""
    x = feats.double()
    if module.with_proj:
        conv1, conv2 = module.proj_head[0], module.proj_head[2]
        x = F.conv2d(
            F.relu(F.conv2d(x, conv1.weight.double(), conv1.bias.double())), conv2.weight.double(), conv2.bias.double()
        )
    x = F.normalize(x, dim=1)
    n, _, h, w = x.shape
    losses, valid = [], []
    for r in range(min(n, module.max_instances)):
        area = int(masks[r].sum())
        if module.num_samples < area < h * w - module.num_samples:
            v = len(valid)
            losses.append(
                reference_roi_loss_matrix(
                    x[r].reshape(x.shape[1], -1), anchor_idx[v], pos_idx[v], neg_idx[v], module.temperature
                )
            )
            valid.append(r)
    if not losses:
        return torch.zeros((), dtype=torch.float64), valid
    return module.loss_weight * torch.stack(losses).mean(), valid


def random_masks(n, h, w, generator, min_area=40, max_area=None):
    """Rectangles of random size and place (areas within [min_area, max_area])."""
    max_area = max_area or h * w - 40
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for r in range(n):
        while True:
            mh = int(torch.randint(1, h + 1, (1,), generator=generator))
            mw = int(torch.randint(1, w + 1, (1,), generator=generator))
            if min_area <= mh * mw <= max_area:
                break
        top = int(torch.randint(0, h - mh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - mw + 1, (1,), generator=generator))
        masks[r, top : top + mh, left : left + mw] = True
    return masks


def graph_size(tensor):
    """Number of autograd nodes behind ``tensor``."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


# --------------------------------------------------------------------------- the loss function


def test_loss_matches_pairwise_reference_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    n, c, h, w, k = 5, 16, 10, 10, 6
    feats = F.normalize(torch.randn(n, c, h, w, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    masks = random_masks(n, h, w, g, min_area=10, max_area=90)
    anchor_idx, pos_idx, neg_idx = sample_points(masks, k, generator=g)

    ours = dense_contrastive_loss(feats, anchor_idx, pos_idx, neg_idx, 0.07)
    (grad_ours,) = torch.autograd.grad(ours.sum(), feats)
    flat = feats.reshape(n, c, -1)
    expected = torch.stack(
        [reference_roi_loss_pairs(flat[r], anchor_idx[r], pos_idx[r], neg_idx[r], 0.07) for r in range(n)]
    )
    (grad_expected,) = torch.autograd.grad(expected.sum(), feats)

    assert ours.shape == (n,)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=1e-9, atol=1e-9)


def test_loss_float32_at_paper_sizes_matches_float64_reference_to_1e5():
    g = torch.Generator().manual_seed(1)
    n, c, h, w, k = 12, 256, 28, 28, 32
    raw = torch.randn(n, c, h, w, generator=g)
    feats32 = F.normalize(raw, dim=1).requires_grad_()
    feats64 = F.normalize(raw.double(), dim=1).requires_grad_()
    masks = random_masks(n, h, w, g)
    idx = sample_points(masks, k, generator=g)

    ours = dense_contrastive_loss(feats32, *idx, temperature=0.07)
    (grad_ours,) = torch.autograd.grad(ours.mean(), feats32)
    expected = torch.stack(
        [
            reference_roi_loss_matrix(feats64.reshape(n, c, -1)[r], idx[0][r], idx[1][r], idx[2][r], 0.07)
            for r in range(n)
        ]
    )
    (grad_expected,) = torch.autograd.grad(expected.mean(), feats64)

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours.double(), grad_expected, rtol=1e-5, atol=1e-5)


def test_loss_is_stable_where_the_plain_formula_overflows():
    # T = 0.005: e^{1/T} = e^200 overflows float32 (and the naive formula gives nan); the
    # stable form must still agree with the float64 reference.
    g = torch.Generator().manual_seed(2)
    n, c, h, w, k = 3, 8, 8, 8, 5
    raw = torch.randn(n, c, h, w, generator=g)
    feats = F.normalize(raw, dim=1).requires_grad_()
    masks = random_masks(n, h, w, g, min_area=8, max_area=56)
    idx = sample_points(masks, k, generator=g)
    temperature = 0.005
    naive = reference_roi_loss_matrix(feats.detach().reshape(n, c, -1)[0], idx[0][0], idx[1][0], idx[2][0], temperature)
    assert not torch.isfinite(naive)  # the check below is meaningful only if this overflows

    ours = dense_contrastive_loss(feats, *idx, temperature=temperature)
    ours.sum().backward()
    expected = torch.stack(
        [
            reference_roi_loss_matrix(
                F.normalize(raw.double(), dim=1).reshape(n, c, -1)[r], idx[0][r], idx[1][r], idx[2][r], temperature
            )
            for r in range(n)
        ]
    )
    assert torch.isfinite(ours).all() and torch.isfinite(feats.grad).all()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-4)


def test_loss_graph_does_not_grow_with_the_number_of_rois():
    # A Python loop over RoIs adds autograd nodes per RoI; the vectorised loss must not.
    g = torch.Generator().manual_seed(3)
    sizes = []
    for n in (2, 40):
        feats = F.normalize(torch.randn(n, 8, 12, 12, generator=g), dim=1).requires_grad_()
        idx = sample_points(random_masks(n, 12, 12, g, min_area=20, max_area=100), 7, generator=g)
        sizes.append(graph_size(dense_contrastive_loss(feats, *idx, temperature=0.1).sum()))
    assert sizes[0] == sizes[1]


def test_gather_points_picks_row_major_pixels():
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    index = torch.tensor([[0, 7, 19], [5, 5, 13]])
    got = gather_points(feats, index)
    for r in range(2):
        for j, flat in enumerate(index[r].tolist()):
            assert torch.equal(got[r, j], feats[r, :, flat // 5, flat % 5])
    assert got.shape == (2, 3, 3)


def test_registered_loss_function_name():
    assert set(LOSS_FUNCTIONS) == {"dense_contrast_loss"}


# --------------------------------------------------------------------------- sampling


def test_sampling_stays_inside_and_outside_the_masks_and_is_reproducible():
    g = torch.Generator().manual_seed(4)
    masks = random_masks(20, 28, 28, g)
    first = sample_points(masks, 32, generator=torch.Generator().manual_seed(7))
    again = sample_points(masks, 32, generator=torch.Generator().manual_seed(7))
    other = sample_points(masks, 32, generator=torch.Generator().manual_seed(8))
    flat = masks.reshape(20, -1)
    anchor_idx, pos_idx, neg_idx = first
    for idx in first:
        assert idx.shape == (20, 32) and idx.dtype == torch.long
    assert flat.gather(1, anchor_idx).all() and flat.gather(1, pos_idx).all()
    assert not flat.gather(1, neg_idx).any()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_sampling_is_uniform_over_mask_and_background_pixels():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 1:3, 2:5] = True  # 6 foreground pixels, 30 background pixels
    draws = 6000
    anchor_idx, pos_idx, neg_idx = sample_points(mask, draws, generator=torch.Generator().manual_seed(5))
    fg_pixels = mask.flatten().nonzero().flatten()
    bg_pixels = (~mask.flatten()).nonzero().flatten()
    for idx, pixels in ((anchor_idx, fg_pixels), (pos_idx, fg_pixels), (neg_idx, bg_pixels)):
        counts = torch.bincount(idx.flatten(), minlength=36)[pixels].double()
        assert counts.sum() == draws  # nothing outside the allowed set
        assert chisquare(counts.numpy()).pvalue > 1e-3


def test_sampling_more_points_than_the_mask_has_pixels():
    mask = torch.zeros(1, 28, 28, dtype=torch.bool)
    mask[0, 0, :3] = True  # area 3 < K = 32
    anchor_idx, pos_idx, _ = sample_points(mask, 32, generator=torch.Generator().manual_seed(6))
    assert set(anchor_idx.flatten().tolist()) <= {0, 1, 2}
    assert set(pos_idx.flatten().tolist()) == {0, 1, 2}  # with replacement: every pixel shows up


def test_sampling_rejects_rois_without_pixels_of_a_kind():
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[0, 1, 1] = True
    masks[2] = True
    with pytest.raises(ValueError, match="RoI 1 has no foreground pixel"):
        sample_points(masks, 4)
    with pytest.raises(ValueError, match="RoI 1 has no background pixel"):
        sample_points(masks[[0, 2]].clone(), 4)  # row 1 of this subset is the full mask
    with pytest.raises(ValueError, match="BoolTensor"):
        sample_points(masks.float(), 4)


def test_sampling_needs_a_positive_number_of_points():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"num_samples must be positive, got {bad}"):
            sample_points(mask, bad)
    anchor_idx, pos_idx, neg_idx = sample_points(mask, 1)  # K = 1 is the smallest valid setting
    assert anchor_idx.tolist() == pos_idx.tolist() == [[0], [0]]
    assert neg_idx.shape == (2, 1) and (neg_idx != 0).all()


def test_sampling_without_rois_gives_empty_index_tensors_of_k_columns():
    for masks in (torch.zeros(0, 28, 28, dtype=torch.bool), torch.zeros(0, 1, 3, dtype=torch.bool)):
        indices = sample_points(masks, 5)
        assert len(indices) == 3
        for idx in indices:
            assert idx.shape == (0, 5) and idx.dtype == torch.long and idx.device == masks.device


def test_validity_rule_boundaries():
    k, side = 32, 28
    areas = [0, k, k + 1, side * side - k - 1, side * side - k, side * side]
    masks = torch.zeros(len(areas), side, side, dtype=torch.bool)
    for r, area in enumerate(areas):
        masks[r].view(-1)[:area] = True
    assert valid_roi_mask(masks, k).tolist() == [False, False, True, True, False, False]


# --------------------------------------------------------------------------- the module


@pytest.mark.parametrize("with_proj", [True, False])
def test_module_matches_the_specification(with_proj):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(9)
    n, c, side, k = 9, 32, 28, 32
    module = DenseContrastiveLoss(
        c, loss_weight=1.2, num_samples=k, temperature=0.07, with_proj=with_proj, max_instances=7
    )
    feats = torch.randn(n, c, side, side, generator=g).relu().requires_grad_()  # post-ReLU features
    masks = random_masks(n, side, side, g)
    masks[1] = False
    masks[1, :2, :10] = True  # area 20 < K: invalid
    masks[5] = True
    masks[5, 0, :10] = False  # area 774 > 28*28 - K: invalid

    out = module(feats, masks, generator=g)
    params = [feats, *module.parameters()]
    grads = torch.autograd.grad(out.loss, params)
    expected, valid = reference_module_loss(feats, masks, module, out.anchor_idx, out.pos_idx, out.neg_idx)
    expected_grads = torch.autograd.grad(expected, params)

    assert valid == [0, 2, 3, 4, 6] and out.valid_rois.tolist() == valid
    assert (out.num_rois, out.num_valid_rois) == (7, 5)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6)
    assert len(list(module.parameters())) == (4 if with_proj else 0)


def test_module_ignores_rois_after_max_instances():
    g = torch.Generator().manual_seed(10)
    module = DenseContrastiveLoss(16, max_instances=3, num_samples=8)
    feats = torch.randn(5, 16, 14, 14, generator=g).requires_grad_()
    masks = random_masks(5, 14, 14, g, min_area=30, max_area=150)
    out = module(feats, masks, generator=torch.Generator().manual_seed(1))
    out.loss.backward()

    changed_feats = feats.detach().clone()
    changed_feats[3:] = torch.randn(2, 16, 14, 14, generator=g)
    changed_masks = masks.clone()
    changed_masks[3:] = ~changed_masks[3:]
    again = module(changed_feats, changed_masks, generator=torch.Generator().manual_seed(1))

    assert out.num_rois == 3 and out.valid_rois.max() < 3
    assert torch.equal(out.loss, again.loss)
    assert feats.grad[3:].abs().sum() == 0 and feats.grad[:3].abs().sum() > 0


@pytest.mark.parametrize("n", [0, 4])
def test_module_without_valid_rois_gives_zero_with_the_graph_kept(n):
    module = DenseContrastiveLoss(8, num_samples=32)
    feats = torch.randn(n, 8, 28, 28).requires_grad_()
    masks = torch.zeros(n, 28, 28, dtype=torch.bool)
    masks[:, :4, :4] = True  # area 16 <= K: no valid RoI
    out = module(feats, masks)
    assert out.loss.item() == 0.0 and out.num_valid_rois == 0 and out.loss.requires_grad
    out.loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() == 0
    # Every parameter takes part (DistributedDataParallel requires it), with a zero gradient.
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in module.parameters())


def test_module_graph_does_not_grow_with_the_number_of_rois():
    g = torch.Generator().manual_seed(11)
    module = DenseContrastiveLoss(8, num_samples=6)
    sizes = []
    for n in (3, 30):
        feats = torch.randn(n, 8, 16, 16, generator=g).requires_grad_()
        out = module(feats, random_masks(n, 16, 16, g, min_area=20, max_area=200), generator=g)
        assert out.num_valid_rois == n
        sizes.append(graph_size(out.loss))
    assert sizes[0] == sizes[1]


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown LOSS_FUNC 'nope'; known: dense_contrast_loss"):
        DenseContrastiveLoss(8, loss_func="nope")
    with pytest.raises(ValueError, match="TEMPERATURE"):
        DenseContrastiveLoss(8, temperature=0.0)
    with pytest.raises(ValueError, match="NUM_SAMPLES"):
        DenseContrastiveLoss(8, num_samples=0)
    with pytest.raises(ValueError, match="disagree"):
        DenseContrastiveLoss(8)(torch.zeros(2, 8, 28, 28), torch.zeros(2, 14, 14, dtype=torch.bool))


def test_module_weight_scales_the_mean():
    g = torch.Generator().manual_seed(12)
    feats = torch.randn(4, 8, 20, 20, generator=g)
    masks = random_masks(4, 20, 20, g, min_area=60, max_area=300)
    light = DenseContrastiveLoss(8, with_proj=False, loss_weight=0.1, num_samples=16)
    heavy = DenseContrastiveLoss(8, with_proj=False, loss_weight=1.6, num_samples=16)
    a = light(feats, masks, generator=torch.Generator().manual_seed(0))
    b = heavy(feats, masks, generator=torch.Generator().manual_seed(0))
    assert math.isclose(b.loss.item() / a.loss.item(), 16.0, rel_tol=1e-5)
    assert math.isclose(a.loss.item(), 0.1 * a.per_roi_loss.mean().item(), rel_tol=1e-6)


def test_module_computes_the_loss_in_float32_under_mixed_precision():
    # With bfloat16 autocast the similarities would lose ~3 significant digits (s spans +-1/T);
    # the module keeps them in float32, so the loss equals the float32 loss of the same inputs.
    g = torch.Generator().manual_seed(13)
    module = DenseContrastiveLoss(16, with_proj=False, num_samples=16)
    feats = torch.randn(6, 16, 20, 20, generator=g).bfloat16()
    masks = random_masks(6, 20, 20, g, min_area=60, max_area=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module(feats, masks, generator=torch.Generator().manual_seed(0))
    full = module(feats.float(), masks, generator=torch.Generator().manual_seed(0))
    assert mixed.loss.dtype == torch.float32
    torch.testing.assert_close(mixed.per_roi_loss, full.per_roi_loss, rtol=1e-6, atol=1e-6)


def test_one_sample_of_each_kind_is_a_valid_configuration():
    # NUM_SAMPLES = 1 is allowed (>= 1): one anchor, positive and negative per RoI.
    g = torch.Generator().manual_seed(7)
    module = DenseContrastiveLoss(8, num_samples=1, with_proj=False)
    feats = torch.randn(3, 8, 6, 6, generator=g)
    masks = random_masks(3, 6, 6, g, min_area=4, max_area=30)
    out = module(feats, masks, generator=g)
    expected, valid = reference_module_loss(feats, masks, module, out.anchor_idx, out.pos_idx, out.neg_idx)
    assert out.num_valid_rois == len(valid) == 3
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-6)
