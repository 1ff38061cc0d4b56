"""RefineMask (Zhang et al., CVPR 2021) for detectron2, with the dense contrastive loss on top.

The mask branch of RefineMask, as in its repository (commit 633ed2b) and the DCL repository's
``more_models/RefineMask`` patch, written for detectron2. Importing this module registers:

``RefineMaskROIHeads`` (``ROI_HEADS_REGISTRY``)
    :class:`~dcl.model.heads.ContrastRoIHeads` whose mask head also gets the FPN level of stride 4
    (the semantic branch's input), the RoI labels and, in training, the image-level ground truth.
``RefineMaskHead`` (``ROI_MASK_HEAD_REGISTRY``)
    Instance convs on the 14x14 RoI features, the semantic head (convs + 1-channel logits at
    stride 4), semantic-fusion stages 14 -> 28 -> 56 -> 112 with the multi-branch dilated fusion,
    and class-wise logits per stage. Training losses ``loss_instance`` and ``loss_semantic``
    (:func:`refine_mask_loss`); inference gives the boundary-refined 112x112 mask probabilities
    as ``pred_masks``, which detectron2 pastes into the image (threshold 0.5) as for Mask R-CNN.
``RefineMaskContrastHead`` (``ROI_MASK_HEAD_REGISTRY``)
    ``RefineMaskHead`` plus ``loss_contrast``: :class:`dcl.model.loss.DenseContrastiveLoss` on the first
    fusion stage's output features (28x28, half the instance channels) against the 28x28
    targets, set by ``MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*``. Inference is ``RefineMaskHead``'s.

Settings: ``MODEL.REFINE_MASK.*`` (:func:`add_refinemask_config`), defaults from the Cityscapes
recipe ``configs/refinemask/cityscapes/r50-refinemask.py``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import dcl.compat  # noqa: F401  (before any detectron2 module)
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ROIAlign, ShapeSpec, cat
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, mask_rcnn_inference
from detectron2.structures import BitMasks, Instances, PolygonMasks, polygons_to_bitmask
from fvcore.nn import weight_init
from torch import nn

from dcl.model.loss import DenseContrastiveLoss
from dcl.model.heads import CONTRAST_KEYWORDS, ContrastRoIHeads, contrast_head_arguments, record_contrast_stats

__all__ = [
    "REFINE_MASK_DEFAULTS",
    "RefineMaskContrastHead",
    "RefineMaskHead",
    "RefineMaskROIHeads",
    "add_refinemask_config",
    "boundary_map",
    "refine_mask_loss",
    "refine_stage_logits",
]

# The Cityscapes recipe's mask head (r50-refinemask.py): RefineMaskHead and RefineCrossEntropyLoss.
REFINE_MASK_DEFAULTS: dict[str, object] = {
    "SEMANTIC_IN_FEATURE": "p2",  # x[0] of the FPN: stride 4
    "NUM_INSTANCE_CONVS": 2,
    "NUM_SEMANTIC_CONVS": 4,
    "CONV_DIM": 256,  # instance and semantic conv channels
    "DILATIONS": [1, 3, 5],
    "MASK_USE_SIGMOID": True,
    "STAGE_LOSS_WEIGHTS": [0.25, 0.5, 0.75, 1.0],  # one per stage: 14, 28, 56, 112
    "SEMANTIC_LOSS_WEIGHT": 1.0,
    "BOUNDARY_WIDTH": 2,
    "START_STAGE": 1,
}


def add_refinemask_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.REFINE_MASK`` with RefineMask's Cityscapes defaults (keeps values already set)."""
    if "REFINE_MASK" not in cfg.MODEL:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.REFINE_MASK = CfgNode(
            {k: (list(v) if isinstance(v, list) else v) for k, v in REFINE_MASK_DEFAULTS.items()}
        )
        if was_frozen:
            cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------- the loss
def boundary_map(masks: torch.Tensor, width: int) -> torch.Tensor:
    """RefineMask's boundary pixels (``generate_block_target(...) == 1``).

    A pixel is boundary when it is foreground and more than 10 % of its ``(2w+1)^2`` window is
    background, or background and more than 10 % of the window is foreground; outside the map
    counts as background.

    Args:
        masks: (R, S, S) binary masks (bool or 0/1 float).
        width: w >= 1.

    Returns:
        BoolTensor (R, S, S).
    """
    fg = masks.float().unsqueeze(1)
    window = 2 * width + 1
    fg_count = F.avg_pool2d(fg, window, stride=1, padding=width, count_include_pad=True) * window**2
    threshold = 0.1 * window**2
    is_fg = fg > 0.5
    return torch.where(is_fg, window**2 - fg_count > threshold, fg_count > threshold).squeeze(1)


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _upsample_region(region: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A (R, S, S) bool region at (R, *size): bilinear (corners aligned), then >= 0.5."""
    return _upsample(region.unsqueeze(1).float(), size).squeeze(1) >= 0.5


def _boundary_stage_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    previous_logits: torch.Tensor,
    previous_target: torch.Tensor,
    refined: torch.Tensor,
    boundary_width: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss and refined prediction of one boundary-only stage of :func:`refine_mask_loss`.

    Args:
        logits: (R, S, S) the stage's mask logits.
        target: (R, S, S) its binary target, in ``logits``' dtype.
        previous_logits: (R, 1, S', S') the previous stage's logits.
        previous_target: (R, S', S') the previous stage's target.
        refined: (R, S', S') bool, the previous stage's refined binary prediction.
        boundary_width: w of the boundary region.

    Returns:
        ``(loss, refined)``: the scalar BCE summed over the boundary region and divided by its
        pixel count (at least 1), and this stage's (R, S, S) bool refined prediction.
    """
    size = logits.shape[-2:]
    region = boundary_map(refined, boundary_width) | boundary_map(previous_target, boundary_width)
    region = _upsample_region(region, size)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (bce * region).sum() / region.sum().clamp(min=1)
    on_boundary = _upsample_region(boundary_map(refined, 1), size)
    previous = _upsample(previous_logits, size).squeeze(1)
    return loss, torch.where(on_boundary, logits, previous).sigmoid() >= 0.5


def refine_mask_loss(
    stage_logits: Sequence[torch.Tensor],
    semantic_logits: torch.Tensor,
    stage_targets: Sequence[torch.Tensor],
    semantic_target: torch.Tensor,
    stage_weights: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    semantic_weight: float = 1.0,
    boundary_width: int = 2,
    start_stage: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RefineMask's loss (``RefineCrossEntropyLoss``).

    Stages ``0..start_stage`` contribute the mean binary cross-entropy over their whole mask.
    Each later stage ``i`` contributes the BCE summed over a boundary region and divided by its
    pixel count (at least 1): the width-``boundary_width`` boundary of the previous stage's
    refined binary prediction united with that of target ``i-1``, upsampled to stage ``i``'s size.
    The refined prediction then becomes stage ``i-1``'s logits upsampled, with stage ``i``'s on
    the width-1 boundary of the previous refined prediction, thresholded at 0.5 after a sigmoid.
    Upsampling is bilinear with corners aligned; regions are thresholded at 0.5.

    Args:
        stage_logits: per stage i, (R, 1, S_i, S_i) mask logits of the R RoIs (S_i = S_0 * 2^i).
        semantic_logits: (N, 1, H, W) semantic logits of the N images.
        stage_targets: per stage, (R, S_i, S_i) binary targets (float or bool).
        semantic_target: (N, H, W) binary semantic target.
            With R = 0 the stage losses are zero (upstream's would be NaN).
        stage_weights: one weight per stage.
        semantic_weight: weight of the semantic BCE.
        boundary_width: w of the boundary region of the boundary-only stages.
        start_stage: last stage with the full-mask loss.

    Returns:
        ``(loss_instance, loss_semantic)``: the weighted sum over stages and the weighted mean
        semantic BCE, both scalars.
    """
    if len(stage_logits) != len(stage_targets) or len(stage_logits) != len(stage_weights):
        raise ValueError(
            f"{len(stage_logits)} stage logits, {len(stage_targets)} stage targets and "
            f"{len(stage_weights)} stage weights: they must be as many"
        )
    losses = []
    refined = None  # (R, S, S) bool: the previous stage's refined binary prediction
    for index, (logits, target) in enumerate(zip(stage_logits, stage_targets)):
        logits, target = logits.squeeze(1), target.to(logits.dtype)
        if index <= start_stage:
            # No RoI: zero, in the graph (the mean of nothing would be NaN).
            losses.append(F.binary_cross_entropy_with_logits(logits, target) if len(logits) else logits.sum())
            refined = logits.sigmoid() >= 0.5
            continue
        loss, refined = _boundary_stage_loss(
            logits, target, stage_logits[index - 1], stage_targets[index - 1], refined, boundary_width
        )
        losses.append(loss)
    loss_instance = sum(weight * loss for weight, loss in zip(stage_weights, losses))
    loss_semantic = semantic_weight * F.binary_cross_entropy_with_logits(
        semantic_logits.squeeze(1), semantic_target.to(semantic_logits.dtype)
    )
    return loss_instance, loss_semantic


def refine_stage_logits(stage_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """RefineMask's inference refinement of the stage predictions (``simple_test_mask``).

    From stage 1 on, each next stage keeps its own logits only on the width-1 boundary of the
    previous refined prediction; elsewhere it takes the previous refined logits upsampled.

    Args:
        stage_logits: per stage i, (R, 1, S_i, S_i) logits.

    Returns:
        (R, 1, S_last, S_last) refined logits of the last stage.
    """
    refined = stage_logits[1]
    for logits in stage_logits[2:]:
        size = logits.shape[-2:]
        on_boundary = _upsample_region(boundary_map(refined.squeeze(1).sigmoid() >= 0.5, 1), size).unsqueeze(1)
        refined = torch.where(on_boundary, logits, _upsample(refined, size))
    return refined


# ----------------------------------------------------------------------------- the head
def _conv(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A conv with MSRA (fan-out) initialisation and zero bias, as RefineMask initialises them."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
    weight_init.c2_msra_fill(conv)
    return conv


def _select_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R, K, S, S) class-wise logits -> (R, 1, S, S) at each RoI's class."""
    return logits[torch.arange(len(labels), device=logits.device), labels].unsqueeze(1)


class MultiBranchFusion(nn.Module):
    """Three 3x3 convs (dilations 1, 3, 5 by default, each + ReLU), summed, then a 1x1 conv."""

    def __init__(self, channels: int, dilations: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(_conv(channels, channels, 3, dilation=d) for d in dilations)
        self.merge_conv = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) -> (R, C, S, S)."""
        return self.merge_conv(sum(F.relu(branch(x)) for branch in self.branches))


class SemanticFusionStage(nn.Module):
    """One semantic-fusion stage (RefineMask's SFM): C channels at S x S -> C/2 at 2S x 2S."""

    def __init__(
        self,
        semantic_channels: int,
        channels: int,
        size: int,
        num_classes: int,
        dilations: Sequence[int],
        semantic_stride: int,
        mask_use_sigmoid: bool,
    ):
        super().__init__()
        self.mask_use_sigmoid = mask_use_sigmoid
        self.semantic_transform_in = _conv(semantic_channels, channels)
        self.semantic_pooler = ROIAlign((size, size), 1.0 / semantic_stride, sampling_ratio=0, aligned=True)
        self.semantic_transform_out = _conv(channels, channels)
        self.instance_logits = _conv(channels, num_classes)
        self.fuse_in = _conv(2 * channels + 2, channels)
        self.fusion = MultiBranchFusion(channels, dilations)
        self.fuse_transform_out = _conv(channels, channels // 2 - 2)

    def forward(
        self,
        features: torch.Tensor,
        semantic_features: torch.Tensor,
        semantic_logits: torch.Tensor,
        rois: torch.Tensor,
        labels: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: (R, C, S, S) instance features.
            semantic_features: (N, C_sem, H, W) the semantic head's features (stride 4).
            semantic_logits: (N, 1, H, W) the semantic logits.
            rois: (R, 5) ``(image index, x0, y0, x1, y1)`` in input-image pixels.
            labels: (R,) LongTensor, each RoI's class.

        Returns:
            ``(logits, next_features)``: (R, 1, S, S) instance logits at the RoI's class and
            (R, C/2, 2S, 2S) features for the next stage.
        """
        semantic = F.relu(self.semantic_transform_in(semantic_features))
        semantic = F.relu(self.semantic_transform_out(self.semantic_pooler(semantic, rois)))
        logits = _select_class(self.instance_logits(features), labels)
        masks = logits.sigmoid() if self.mask_use_sigmoid else logits
        semantic_masks = self.semantic_pooler(
            semantic_logits.sigmoid() if self.mask_use_sigmoid else semantic_logits, rois
        )
        fused = F.relu(self.fuse_in(torch.cat([features, semantic, masks, semantic_masks], dim=1)))
        fused = F.relu(self.fuse_transform_out(F.relu(self.fusion(fused))))
        # mmcv's "bilinear" upsample layer: nn.Upsample, corners not aligned; the masks are
        # upsampled with corners aligned (F.interpolate(..., align_corners=True) upstream).
        fused = F.relu(F.interpolate(fused, scale_factor=2, mode="bilinear", align_corners=False))
        size = fused.shape[-2:]
        return logits, torch.cat([fused, _upsample(masks, size), _upsample(semantic_masks, size)], dim=1)


def _check_stage_options(stage_loss_weights: Sequence[float], conv_dim: int, start_stage: int) -> None:
    """ValueError (naming the config key) unless there are >= 2 stages, ``conv_dim`` leaves >= 4
    channels after halving at each stage, and ``start_stage`` is a stage index."""
    if len(stage_loss_weights) < 2:
        raise ValueError("MODEL.REFINE_MASK.STAGE_LOSS_WEIGHTS needs at least 2 stages")
    if conv_dim // 2 ** (len(stage_loss_weights) - 1) < 4:
        raise ValueError(f"MODEL.REFINE_MASK.CONV_DIM {conv_dim} is too small for {len(stage_loss_weights)} stages")
    if not 0 <= start_stage < len(stage_loss_weights):
        raise ValueError(f"MODEL.REFINE_MASK.START_STAGE {start_stage} is not a stage index")


def _fusion_stages(
    stage_sizes: Sequence[int],
    semantic_channels: int,
    channels: int,
    num_classes: int,
    dilations: Sequence[int],
    semantic_stride: int,
    mask_use_sigmoid: bool,
) -> Tuple[nn.ModuleList, int]:
    """The :class:`SemanticFusionStage` of each stage but the last, at ``stage_sizes[:-1]``, each
    taking ``channels`` instance channels and halving them; returns them and the instance
    channels of the last stage."""
    stages = nn.ModuleList()
    for size in stage_sizes[:-1]:
        stages.append(
            SemanticFusionStage(
                semantic_channels, channels, size, num_classes, dilations, semantic_stride, mask_use_sigmoid
            )
        )
        channels //= 2
    return stages, channels


@ROI_MASK_HEAD_REGISTRY.register()
class RefineMaskHead(nn.Module):
    """RefineMask's mask head. Submodules: ``instance_convs``, ``semantic_convs``,
    ``semantic_logits``, ``stages`` (:class:`SemanticFusionStage`), ``final_instance_logits``."""

    has_contrast_loss = False

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        semantic_channels: int,
        semantic_stride: int = 4,
        num_instance_convs: int = 2,
        num_semantic_convs: int = 4,
        conv_dim: int = 256,
        dilations: Sequence[int] = (1, 3, 5),
        mask_use_sigmoid: bool = True,
        stage_loss_weights: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        semantic_loss_weight: float = 1.0,
        boundary_width: int = 2,
        start_stage: int = 1,
    ):
        """
        Args:
            input_shape: the pooled RoI features (C_in channels, S_0 x S_0; 14 in the recipe).
            num_classes: K, classes of the class-wise logits.
            semantic_channels, semantic_stride: the semantic input's channels and stride (P2: 4).
            num_instance_convs, num_semantic_convs, conv_dim: the 3x3 conv + ReLU towers.
            dilations: of the multi-branch fusion.
            mask_use_sigmoid: feed the stages' instance and semantic masks as probabilities.
            stage_loss_weights: one per stage; their number fixes the stages (S_0 * 2^i).
            semantic_loss_weight, boundary_width, start_stage: see :func:`refine_mask_loss`.
        """
        super().__init__()
        _check_stage_options(stage_loss_weights, conv_dim, start_stage)
        self.stage_sizes = [input_shape.height * 2**i for i in range(len(stage_loss_weights))]
        self.semantic_stride = semantic_stride
        self.loss_arguments = dict(
            stage_weights=tuple(stage_loss_weights),
            semantic_weight=semantic_loss_weight,
            boundary_width=boundary_width,
            start_stage=start_stage,
        )
        self.instance_convs = nn.ModuleList(
            _conv(input_shape.channels if i == 0 else conv_dim, conv_dim, 3) for i in range(num_instance_convs)
        )
        self.semantic_convs = nn.ModuleList(
            _conv(semantic_channels if i == 0 else conv_dim, conv_dim, 3) for i in range(num_semantic_convs)
        )
        self.semantic_logits = _conv(conv_dim, 1)
        self.stages, channels = _fusion_stages(
            self.stage_sizes,
            conv_dim if num_semantic_convs else semantic_channels,
            conv_dim if num_instance_convs else input_shape.channels,
            num_classes,
            dilations,
            semantic_stride,
            mask_use_sigmoid,
        )
        self.final_instance_logits = _conv(channels, num_classes)

    @classmethod
    def from_config(cls, cfg, input_shape):
        c = cfg.MODEL.REFINE_MASK
        return dict(
            input_shape=input_shape,
            num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            semantic_channels=input_shape.channels,
            num_instance_convs=c.NUM_INSTANCE_CONVS,
            num_semantic_convs=c.NUM_SEMANTIC_CONVS,
            conv_dim=c.CONV_DIM,
            dilations=tuple(c.DILATIONS),
            mask_use_sigmoid=c.MASK_USE_SIGMOID,
            stage_loss_weights=tuple(c.STAGE_LOSS_WEIGHTS),
            semantic_loss_weight=c.SEMANTIC_LOSS_WEIGHT,
            boundary_width=c.BOUNDARY_WIDTH,
            start_stage=c.START_STAGE,
        )

    def layers(self, x: torch.Tensor, semantic_features: torch.Tensor, rois: torch.Tensor, labels: torch.Tensor):
        """
        Args:
            x: (R, C_in, S_0, S_0) pooled RoI features.
            semantic_features: (N, C_sem, H, W), the FPN level of stride ``semantic_stride``.
            rois: (R, 5) ``(image index, x0, y0, x1, y1)``.
            labels: (R,) LongTensor, each RoI's class.

        Returns:
            ``(stage_logits, semantic_logits, first_stage_features)``: per stage (R, 1, S_i, S_i)
            logits at the RoI's class; (N, 1, H, W) semantic logits; (R, C/2, 2 S_0, 2 S_0)
            output features of the first fusion stage (what DCL acts on).
        """
        for conv in self.instance_convs:
            x = F.relu(conv(x))
        for conv in self.semantic_convs:
            semantic_features = F.relu(conv(semantic_features))
        semantic_logits = self.semantic_logits(semantic_features)
        stage_logits, first_stage_features = [], None
        for stage in self.stages:
            logits, x = stage(x, semantic_features, semantic_logits, rois, labels)
            stage_logits.append(logits)
            first_stage_features = x if first_stage_features is None else first_stage_features
        stage_logits.append(_select_class(self.final_instance_logits(x), labels))
        return stage_logits, semantic_logits, first_stage_features

    def forward(
        self,
        x: torch.Tensor,
        semantic_features: torch.Tensor,
        instances: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """
        Args:
            x: (R, C_in, S_0, S_0) pooled features of the R RoIs.
            semantic_features: (N, C_sem, H, W) the FPN level of stride 4 (padded batch).
            instances: per image, in training the foreground proposals (``proposal_boxes``,
                ``gt_classes``, ``gt_masks``); in inference the detections (``pred_boxes``,
                ``pred_classes``).
            targets: per image, the ground truth (``gt_masks``); training only.

        Returns:
            In training the losses; in inference ``instances`` with ``pred_masks``
            (R_i, 1, S_last, S_last) probabilities, the boundary-refined last stage.
        """
        if not self.training:
            boxes = [i.pred_boxes for i in instances]
            labels = cat([i.pred_classes for i in instances]) if instances else x.new_zeros(0, dtype=torch.long)
            stage_logits, _, _ = self.layers(x, semantic_features, convert_boxes_to_pooler_format(boxes), labels)
            mask_rcnn_inference(refine_stage_logits(stage_logits), instances)
            return instances
        boxes = [i.proposal_boxes for i in instances]
        labels = cat([i.gt_classes for i in instances])
        stage_logits, semantic_logits, features = self.layers(
            x, semantic_features, convert_boxes_to_pooler_format(boxes), labels
        )
        stage_targets = [self._instance_targets(instances, size, x.device) for size in self.stage_sizes]
        semantic_target = self._semantic_target(targets, semantic_logits.shape[-2:])
        loss_instance, loss_semantic = refine_mask_loss(
            stage_logits, semantic_logits, stage_targets, semantic_target, **self.loss_arguments
        )
        losses = {"loss_instance": loss_instance, "loss_semantic": loss_semantic}
        losses.update(self.extra_losses(features, stage_targets))
        return losses

    def extra_losses(self, features: torch.Tensor, stage_targets: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Losses of subclasses on the first fusion stage's features; none here."""
        return {}

    @staticmethod
    def _instance_targets(instances: List[Instances], size: int, device: torch.device) -> torch.Tensor:
        """Each RoI's GT mask cropped to its proposal and resized: (R, size, size) float 0/1."""
        masks = [i.gt_masks.crop_and_resize(i.proposal_boxes.tensor, size).to(device) for i in instances if len(i)]
        if not masks:
            return torch.zeros(0, size, size, device=device)
        return (torch.cat(masks) > 0.5).float() if masks[0].dtype != torch.bool else torch.cat(masks).float()

    def _semantic_target(self, targets: List[Instances], size: Sequence[int]) -> torch.Tensor:
        """The union of each image's GT masks at the padded input size, resized to ``size``
        (bilinear, then >= 0.5): (N, *size) float 0/1."""
        height, width = size[0] * self.semantic_stride, size[1] * self.semantic_stride
        unions = torch.zeros(len(targets), height, width, device=self.semantic_logits.weight.device)
        for index, target in enumerate(targets):
            h, w = target.image_size
            if len(target) == 0:
                continue
            gt_masks = target.gt_masks
            if isinstance(gt_masks, PolygonMasks):
                masks = torch.stack([torch.from_numpy(polygons_to_bitmask(p, h, w)) for p in gt_masks.polygons])
            elif isinstance(gt_masks, BitMasks):
                masks = gt_masks.tensor
            else:
                raise TypeError(
                    f"RefineMask needs PolygonMasks or BitMasks ground truth, got {type(gt_masks).__name__}"
                )
            unions[index, :h, :w] = masks.to(unions.device).any(dim=0).float()
        resized = F.interpolate(unions.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
        return (resized.squeeze(1) >= 0.5).float()


@ROI_MASK_HEAD_REGISTRY.register()
class RefineMaskContrastHead(RefineMaskHead):
    """:class:`RefineMaskHead` plus the dense contrastive loss (``contrast_loss``) on the first
    fusion stage's output features, as the DCL patch's ``RefineRoIHeadDCL``."""

    has_contrast_loss = True

    @configurable
    def __init__(self, input_shape: ShapeSpec, **kwargs):
        """
        Args:
            input_shape, kwargs: as for :class:`RefineMaskHead`, and the ``contrast_*`` keywords of
                :class:`dcl.model.heads.ContrastConvUpsampleHead` (``contrast_loss_weight``, ...:
                :data:`dcl.model.heads.CONTRAST_KEYWORDS`; those not given: the published defaults).
        """
        contrast = {key.removeprefix("contrast_"): kwargs.pop(key) for key in CONTRAST_KEYWORDS if key in kwargs}
        super().__init__(input_shape, **kwargs)
        channels = self.stages[0].fuse_transform_out.out_channels + 2
        self.contrast_loss = DenseContrastiveLoss(channels, **contrast)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), **contrast_head_arguments(cfg)}

    def extra_losses(self, features: torch.Tensor, stage_targets: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        result = self.contrast_loss(features, stage_targets[1] > 0.5)
        record_contrast_stats(result)
        return {"loss_contrast": result.loss}


@ROI_HEADS_REGISTRY.register()
class RefineMaskROIHeads(ContrastRoIHeads):
    """RoI heads for :class:`RefineMaskHead`: the mask head also gets the semantic input (the FPN
    level ``MODEL.REFINE_MASK.SEMANTIC_IN_FEATURE``) and, in training, the ground truth."""

    @configurable
    def __init__(self, *, semantic_in_feature: str = "p2", semantic_stride: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.semantic_in_feature = semantic_in_feature
        head_stride = getattr(self.mask_head, "semantic_stride", semantic_stride)
        if self.mask_on and head_stride != semantic_stride:
            raise ValueError(
                f"MODEL.REFINE_MASK.SEMANTIC_IN_FEATURE {semantic_in_feature!r} has stride "
                f"{semantic_stride}; the mask head expects {head_stride}"
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        feature = cfg.MODEL.REFINE_MASK.SEMANTIC_IN_FEATURE
        if feature not in input_shape:
            raise ValueError(
                f"MODEL.REFINE_MASK.SEMANTIC_IN_FEATURE {feature!r} is not a backbone output ({', '.join(input_shape)})"
            )
        ret.update(semantic_in_feature=feature, semantic_stride=input_shape[feature].stride)
        return ret

    def _forward_mask(
        self, features: Dict[str, torch.Tensor], instances: List[Instances], targets: Optional[List[Instances]] = None
    ):
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            boxes = [i.proposal_boxes for i in instances]
        else:
            boxes = [i.pred_boxes for i in instances]
        pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        return self.mask_head(pooled, features[self.semantic_in_feature], instances, targets=targets)
