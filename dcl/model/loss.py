"""The dense contrastive loss (DCL), in plain PyTorch: point sampling, the loss, the module.

What the loss does (the specification is ``docs/method.md``, "What the loss does"): the mask
head's features (``C`` channels, ``H x W`` per RoI) go through an optional projection head
(1x1 conv, ReLU, 1x1 conv) and are L2-normalised along channels. For each *valid* RoI among the
first ``max_instances`` (valid: ``num_samples < mask area < H*W - num_samples``), ``K`` anchors and
``K`` positives are drawn uniformly with replacement from the RoI's GT mask pixels and ``K``
negatives from the other pixels. With ``s = a.p / T`` and ``a.n / T``::

    loss_roi = mean over (anchor i, positive j) of -log(e^{s_ij} / (e^{s_ij} + sum_k e^{s_ik^neg}))

and the loss is the mean over valid RoIs times ``loss_weight`` (zero, with the graph kept, when no
RoI is valid).

Everything is vectorised over RoIs (no Python loop). The projection and the normalisation act
on each pixel independently, so :class:`DenseContrastiveLoss` gathers the ``3K`` sampled pixels
per RoI first and projects/normalises only those: the same values as projecting the whole
``H x W`` map, for ``3K / (H*W)`` (~1/8 at 28x28, K=32) of the cost.

This module imports only torch (and the plain defaults of :mod:`dcl.model.contrast_config`; detectron2
glue lives in :mod:`dcl.model.heads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dcl.model.contrast_config import DCL_DEFAULTS

__all__ = [
    "LOSS_FUNCTIONS",
    "DenseContrastiveLoss",
    "DenseContrastiveLossOutput",
    "dense_contrastive_loss",
    "dense_contrastive_loss_from_points",
    "gather_points",
    "sample_points",
    "valid_roi_mask",
]


def gather_points(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick per-RoI pixels out of a batch of feature maps, one row per pixel.

    Args:
        feats: features of shape (N, C, H, W).
        index: LongTensor of shape (N, K): flat indices into ``H*W`` (``row * W + col``).

    Returns:
        Tensor of shape (N, K, C): ``out[r, k] = feats[r, :, index[r, k] // W, index[r, k] % W]``.
    """
    n, c = feats.shape[:2]
    if index.dim() != 2 or index.shape[0] != n:
        raise ValueError(f"index must have shape (N={n}, K), got {tuple(index.shape)}")
    # torch.gather: its backward is one scatter into the feature gradient (advanced indexing
    # would accumulate more slowly, a slice of feats would add a full-size zero fill).
    return torch.gather(feats.flatten(2), 2, index.unsqueeze(1).expand(n, c, index.shape[1])).transpose(1, 2)


def dense_contrastive_loss_from_points(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The per-RoI dense contrastive loss from already gathered, L2-normalised points.

    ``loss[r] = mean_{i,j} -log(e^{s_ij} / (e^{s_ij} + sum_k e^{n_ik}))`` with
    ``s_ij = a_i.p_j / T`` and ``n_ik = a_i.n_k / T``, computed as
    ``logaddexp(s_ij, logsumexp_k n_ik) - s_ij``: ``logsumexp``/``logaddexp`` subtract the
    per-anchor maximum before exponentiating, so no temperature or feature scale overflows.

    Args:
        anchors: (N, Ka, C) anchor features, unit length along C.
        positives: (N, Kp, C) positive features.
        negatives: (N, Kn, C) negative features.
        temperature: T > 0.

    Returns:
        Tensor of shape (N,): the loss of each RoI (differentiable w.r.t. all three inputs).
    """
    sim_pos = torch.bmm(anchors, positives.transpose(1, 2)) / temperature  # (N, Ka, Kp)
    sim_neg = torch.bmm(anchors, negatives.transpose(1, 2)) / temperature  # (N, Ka, Kn)
    log_neg = torch.logsumexp(sim_neg, dim=2, keepdim=True)  # (N, Ka, 1)
    per_pair = torch.logaddexp(sim_pos, log_neg) - sim_pos  # (N, Ka, Kp)
    return per_pair.mean(dim=(1, 2))


def dense_contrastive_loss(
    feats: torch.Tensor,
    anchor_idx: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The per-RoI dense contrastive loss at given sample positions.

    Args:
        feats: (N, C, H, W) features, already L2-normalised along C.
        anchor_idx: LongTensor (N, K) of flat indices into ``H*W`` (anchors, inside the mask).
        pos_idx: LongTensor (N, K) of flat indices (positives, inside the mask).
        neg_idx: LongTensor (N, K) of flat indices (negatives, outside the mask).
        temperature: T > 0.

    Returns:
        Tensor of shape (N,): the loss of each RoI, vectorised over RoIs.
    """
    sizes = [anchor_idx.shape[1], pos_idx.shape[1], neg_idx.shape[1]]
    points = gather_points(feats, torch.cat([anchor_idx, pos_idx, neg_idx], dim=1))
    return dense_contrastive_loss_from_points(*points.split(sizes, dim=1), temperature)


def sample_points(
    masks: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw anchors, positives (from mask pixels) and negatives (from the other pixels).

    Uniform sampling with replacement, all RoIs at once (``torch.multinomial`` on each RoI's
    pixel indicator), so ``num_samples`` may exceed the mask area. Draw order: anchors, then
    positives, then negatives; the same ``generator`` state gives the same indices.

    Args:
        masks: BoolTensor of shape (N, H, W).
        num_samples: K, the number of points of each kind per RoI.
        generator: optional ``torch.Generator`` on ``masks``' device.

    Returns:
        ``(anchor_idx, pos_idx, neg_idx)``, each a LongTensor of shape (N, K) of flat indices
        into ``H*W``.

    Raises:
        ValueError: a RoI has no mask pixel or no background pixel (nothing to sample from).
    """
    if masks.dtype != torch.bool or masks.dim() != 3:
        raise ValueError(f"masks must be a BoolTensor (N, H, W), got {masks.dtype} {tuple(masks.shape)}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    n = masks.shape[0]
    if n == 0:
        empty = torch.empty(0, num_samples, dtype=torch.long, device=masks.device)
        return empty, empty.clone(), empty.clone()
    foreground = masks.flatten(1)
    area = foreground.sum(dim=1)
    full = foreground.shape[1]
    bad = ((area == 0) | (area == full)).nonzero().flatten()
    if bad.numel():
        r = int(bad[0])
        kind = "foreground" if int(area[r]) == 0 else "background"
        raise ValueError(f"RoI {r} has no {kind} pixel to sample from ({bad.numel()} such RoIs)")
    return _draw_points(foreground, num_samples, generator)


def _draw_points(
    foreground: torch.Tensor, num_samples: int, generator: Optional[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sample_points` without its checks, for callers whose masks are known to be valid
    (the checks cost a host-device synchronisation). ``foreground``: BoolTensor (N, H*W)."""
    fg_weight = foreground.to(torch.float32)
    bg_weight = 1.0 - fg_weight
    anchor_idx = torch.multinomial(fg_weight, num_samples, replacement=True, generator=generator)
    pos_idx = torch.multinomial(fg_weight, num_samples, replacement=True, generator=generator)
    neg_idx = torch.multinomial(bg_weight, num_samples, replacement=True, generator=generator)
    return anchor_idx, pos_idx, neg_idx


def valid_roi_mask(masks: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The validity rule: ``num_samples < mask area < H*W - num_samples`` (strict).

    Args:
        masks: BoolTensor of shape (N, H, W).
        num_samples: K.

    Returns:
        BoolTensor of shape (N,).
    """
    area = masks.flatten(1).sum(dim=1)
    full = masks.shape[1] * masks.shape[2]
    return (area > num_samples) & (area < full - num_samples)


# LOSS_FUNC name -> function of (anchors, positives, negatives, temperature) -> (N,), on gathered,
# normalised points of shape (N, K, C). "dense_contrast_loss" is the name the original configs use.
LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "dense_contrast_loss": dense_contrastive_loss_from_points,
}


@dataclass
class DenseContrastiveLossOutput:
    """What :class:`DenseContrastiveLoss` computed in one step.

    Attributes:
        loss: scalar, ``loss_weight * mean(per_roi_loss)``; zero (with the graph) if none valid.
        num_rois: RoIs considered (the first ``max_instances`` of the input).
        num_valid_rois: RoIs among those that passed the validity rule.
        per_roi_loss: (V,) unweighted loss of each valid RoI.
        valid_rois: (V,) LongTensor, the input row of each valid RoI.
        anchor_idx, pos_idx, neg_idx: (V, K) LongTensors, the sampled flat pixel indices.
    """

    loss: torch.Tensor
    num_rois: int
    num_valid_rois: int
    per_roi_loss: torch.Tensor
    valid_rois: torch.Tensor
    anchor_idx: torch.Tensor
    pos_idx: torch.Tensor
    neg_idx: torch.Tensor


class DenseContrastiveLoss(nn.Module):
    """The DCL term of the mask head, with the configuration's semantics.

    Parameter names (``proj_head.0``, ``proj_head.2``) are those of the original implementation,
    so its released checkpoints load without missing or unexpected keys.
    """

    def __init__(
        self,
        channels: int = 256,
        *,
        loss_weight: float = DCL_DEFAULTS["LOSS_WEIGHT"],
        num_samples: int = DCL_DEFAULTS["NUM_SAMPLES"],
        temperature: float = DCL_DEFAULTS["TEMPERATURE"],
        with_proj: bool = DCL_DEFAULTS["WITH_PROJ"],
        max_instances: int = DCL_DEFAULTS["MAX_INSTANCES"],
        loss_func: str = DCL_DEFAULTS["LOSS_FUNC"],
    ):
        """
        Args:
            channels: C, channels of the mask-head features (the projection keeps C).
            loss_weight: multiplier of the mean per-RoI loss (``LOSS_WEIGHT``).
            num_samples: K, anchors/positives/negatives per RoI (``NUM_SAMPLES``).
            temperature: T (``TEMPERATURE``).
            with_proj: add the projection head 1x1 conv, ReLU, 1x1 conv (``WITH_PROJ``); its
                parameters exist only then.
            max_instances: only the first this many RoIs are used (``MAX_INSTANCES``).
            loss_func: a name in :data:`LOSS_FUNCTIONS` (``LOSS_FUNC``).
        """
        super().__init__()
        if loss_func not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown LOSS_FUNC {loss_func!r}; known: {', '.join(sorted(LOSS_FUNCTIONS))}")
        for name, value, ok in (
            ("NUM_SAMPLES", num_samples, num_samples >= 1),
            ("MAX_INSTANCES", max_instances, max_instances >= 0),
            ("TEMPERATURE", temperature, temperature > 0),
            ("LOSS_WEIGHT", loss_weight, loss_weight >= 0),
            ("channels", channels, channels >= 1),
        ):
            if not ok:
                raise ValueError(f"invalid {name} {value!r} for the dense contrastive loss")
        self.loss_weight = float(loss_weight)
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.max_instances = int(max_instances)
        self.loss_func = loss_func
        self._loss_fn = LOSS_FUNCTIONS[loss_func]
        self.with_proj = bool(with_proj)
        if self.with_proj:
            self.proj_head = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, kernel_size=1),
            )

    def extra_repr(self) -> str:
        return (
            f"loss_weight={self.loss_weight}, num_samples={self.num_samples}, "
            f"temperature={self.temperature}, max_instances={self.max_instances}, "
            f"loss_func={self.loss_func!r}"
        )

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """Projection (if any) and L2 normalisation of gathered points.

        Args:
            points: (R, M, C) features of M pixels per RoI.

        Returns:
            (R, M, C), unit length along C, in float32.
        """
        if self.with_proj:
            # The 1x1 convs act on each pixel alone: as matrix products on the gathered rows
            # they give the projection of those pixels of the full map.
            first, second = self.proj_head[0], self.proj_head[2]
            points = F.linear(
                F.relu(F.linear(points, first.weight.flatten(1), first.bias)), second.weight.flatten(1), second.bias
            )
        return F.normalize(points.float(), dim=-1)

    def forward(
        self, feats: torch.Tensor, gt_masks: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> DenseContrastiveLossOutput:
        """
        Args:
            feats: (N, C, H, W) mask-head features of the foreground RoIs (before projection).
            gt_masks: BoolTensor (N, H, W), each RoI's GT mask cropped and resized to H x W
                (only the first ``max_instances`` rows are read; more rows are allowed).
            generator: optional ``torch.Generator`` (on ``feats``' device) for the sampling.

        Returns:
            :class:`DenseContrastiveLossOutput`.
        """
        if feats.dim() != 4 or gt_masks.dim() != 3 or gt_masks.shape[1:] != feats.shape[2:]:
            raise ValueError(
                f"feats (N, C, H, W) and gt_masks (N', H, W) disagree: {tuple(feats.shape)} vs {tuple(gt_masks.shape)}"
            )
        num_rois = min(feats.shape[0], self.max_instances)
        masks = gt_masks[:num_rois].to(device=feats.device, dtype=torch.bool)
        valid_rois = valid_roi_mask(masks, self.num_samples).nonzero().flatten()
        num_valid = int(valid_rois.numel())
        if num_valid == 0:
            empty_idx = torch.empty(0, self.num_samples, dtype=torch.long, device=feats.device)
            # Zero that still depends on the features and every projection parameter, so the
            # backward pass and DistributedDataParallel (all parameters must get a gradient)
            # work in steps without a valid RoI.
            zero = feats.sum() * 0.0
            for param in self.parameters():
                zero = zero + param.sum() * 0.0
            return DenseContrastiveLossOutput(
                zero, num_rois, 0, feats.new_zeros(0), valid_rois, empty_idx, empty_idx, empty_idx
            )
        # Valid RoIs have more than num_samples mask and background pixels: sample without re-checking.
        anchor_idx, pos_idx, neg_idx = _draw_points(masks[valid_rois].flatten(1), self.num_samples, generator)
        # Gather for every RoI (pixel 0 for those not valid; cheap), then keep the valid rows:
        # feats is never sliced, so its gradient is built by a single scatter.
        index = torch.zeros(feats.shape[0], 3 * self.num_samples, dtype=torch.long, device=feats.device)
        index[valid_rois] = torch.cat([anchor_idx, pos_idx, neg_idx], dim=1)
        points = gather_points(feats, index)[valid_rois]
        embedded = self.embed(points)
        # Similarities and the loss in float32 also under mixed precision: s = a.p / T spans
        # +-1/T, too coarse in float16 at T = 0.07.
        with torch.autocast(device_type=embedded.device.type, enabled=False):
            anchors, positives, negatives = embedded.split(self.num_samples, dim=1)
            per_roi = self._loss_fn(anchors, positives, negatives, self.temperature)
        return DenseContrastiveLossOutput(
            per_roi.mean() * self.loss_weight,
            num_rois,
            num_valid,
            per_roi,
            valid_rois,
            anchor_idx,
            pos_idx,
            neg_idx,
        )
