"""A mask head of one's own, as the pipeline's "bring your own method" example
(docs/own-method.md): Mask R-CNN's mask head with a Dice term added to its mask loss.

The head is detectron2's ``MaskRCNNConvUpsampleHead`` (same layers, same inference); in training it
returns, beside the per-pixel binary cross-entropy ``loss_mask``, the soft Dice loss of the same
predicted masks against the same targets (the GT masks cropped to the proposal boxes, at the mask
head's resolution, for the GT class):

    loss_mask_dice = DICE_WEIGHT * mean over masks of (1 - (2 * sum(p * g) + s) / (sum(p) + sum(g) + s))

with ``p`` = sigmoid(logits), ``g`` the 0/1 target, sums over the mask's pixels and ``s`` =
``DICE_SMOOTH`` (so an empty target with an empty prediction costs nothing). Dice rewards overlap
as a whole rather than per pixel, which weighs small instances and thin structures more than the
cross-entropy alone does.

Use it through the workflow config (configs/toy_own_method.yaml)::

    methods:
      dice:
        label: Dice head
        imports: [examples/dice_mask_head.py]
        overrides: {MODEL.ROI_MASK_HEAD.NAME: DiceMaskRCNNConvUpsampleHead}

or directly: ``dcl train --import examples/dice_mask_head.py --config-file ... MODEL.ROI_MASK_HEAD.NAME
DiceMaskRCNNConvUpsampleHead MODEL.ROI_MASK_HEAD.DICE_WEIGHT 0.5``.

Plain detectron2: no import of dcl (``dcl train`` imports this module after its own set-up).
"""

from __future__ import annotations

from typing import List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances

__all__ = ["DiceMaskRCNNConvUpsampleHead", "add_config", "dice_loss", "mask_targets"]


def add_config(cfg: CfgNode) -> None:
    """The head's keys, with their defaults (``dcl train`` calls this before reading a config)."""
    cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT = 1.0
    cfg.MODEL.ROI_MASK_HEAD.DICE_SMOOTH = 1.0


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, averaged over masks.

    Args:
        logits: (N, M, M) mask logits.
        targets: (N, M, M) targets in [0, 1].
        smooth: added to numerator and denominator.
    Returns:
        A scalar; 0 for no masks.
    """
    if logits.numel() == 0:
        return logits.sum() * 0
    p = logits.sigmoid().flatten(1)
    g = targets.to(p.dtype).flatten(1)
    overlap = (p * g).sum(1)
    dice = (2 * overlap + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1 - dice).mean()


def mask_targets(pred_mask_logits: torch.Tensor, instances: List[Instances]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of each proposal's GT class and its GT mask cropped to the proposal box, at the
    head's resolution: the pairs detectron2's ``mask_rcnn_loss`` compares."""
    side = pred_mask_logits.size(2)
    classes, masks = [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        classes.append(per_image.gt_classes.to(dtype=torch.int64))
        masks.append(
            per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side).to(pred_mask_logits.device)
        )
    if not masks:
        empty = pred_mask_logits[:0, 0]
        return empty, empty
    if pred_mask_logits.size(1) == 1:  # class-agnostic
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(pred_mask_logits.size(0)), cat(classes, dim=0)]
    return logits, cat(masks, dim=0).to(torch.float32)


@ROI_MASK_HEAD_REGISTRY.register()
class DiceMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` whose training loss adds ``loss_mask_dice``."""

    @configurable
    def __init__(self, input_shape, *, dice_weight: float = 1.0, dice_smooth: float = 1.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.dice_weight = dice_weight
        self.dice_smooth = dice_smooth

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["dice_weight"] = cfg.MODEL.ROI_MASK_HEAD.DICE_WEIGHT
        ret["dice_smooth"] = cfg.MODEL.ROI_MASK_HEAD.DICE_SMOOTH
        return ret

    def forward(self, x, instances: List[Instances]):
        x = self.layers(x)
        if not self.training:
            mask_rcnn_inference(x, instances)
            return instances
        losses = {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        logits, targets = mask_targets(x, instances)
        losses["loss_mask_dice"] = dice_loss(logits, targets, self.dice_smooth) * self.dice_weight
        return losses
