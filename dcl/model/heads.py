"""DCL for detectron2: the config keys and the two registered heads.

Importing this module registers (detectron2 registries, the names the original configs and
README use):

``ContrastRoIHeads`` (``ROI_HEADS_REGISTRY``)
    :class:`~detectron2.modeling.StandardROIHeads` that, in training, also passes the image-level
    ground truth (``targets``) to the mask head.
``ContrastConvUpsampleHead`` (``ROI_MASK_HEAD_REGISTRY``)
    :class:`~detectron2.modeling.roi_heads.MaskRCNNConvUpsampleHead` that adds ``loss_contrast``
    (:class:`dcl.model.loss.DenseContrastiveLoss` on the features after the deconvolution + ReLU) beside
    ``loss_mask`` in training. Inference is the parent's code path on the parent's layers, so
    its output is identical given the same weights; the projection head never runs there.

Enable DCL with ``MODEL.ROI_HEADS.NAME ContrastRoIHeads`` and ``MODEL.ROI_MASK_HEAD.NAME
ContrastConvUpsampleHead``; its settings are ``MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*``
(:func:`add_dcl_config`). Per step, the event storage gets ``dcl/num_rois`` (foreground RoIs
considered, at most ``MAX_INSTANCES``) and ``dcl/num_valid_rois`` (those passing the area rule),
which reach ``metrics.json`` and TensorBoard.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_loss,
)
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from dcl.model.contrast_config import DCL_DEFAULTS, DCL_KEY_PREFIX
from dcl.model.loss import LOSS_FUNCTIONS, DenseContrastiveLoss

__all__ = [
    "CONTRAST_KEYWORDS",
    "DCL_DEFAULTS",
    "ContrastConvUpsampleHead",
    "ContrastRoIHeads",
    "add_dcl_config",
    "check_dcl_config",
    "contrast_head_arguments",
    "contrast_loss_arguments",
    "is_dcl_model_config",
    "record_contrast_stats",
]


def add_dcl_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.ROI_MASK_HEAD.CONTRAST_LOSS`` with its six keys and published defaults.

    Call it on a fresh ``get_cfg()`` before merging a YAML file or overrides (unknown keys stay
    errors, as everywhere in detectron2). Calling it again keeps the values already set.

    Returns:
        ``cfg`` (modified in place).
    """
    mask_head = cfg.MODEL.ROI_MASK_HEAD
    if "CONTRAST_LOSS" not in mask_head:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        mask_head.CONTRAST_LOSS = CfgNode(dict(DCL_DEFAULTS))
        if was_frozen:
            cfg.freeze()
    return cfg


def is_dcl_model_config(cfg: CfgNode) -> bool:
    """True when the config trains with the dense contrastive loss (a mask head registered with
    ``has_contrast_loss``: ``ContrastConvUpsampleHead``, ``RefineMaskContrastHead``)."""
    name = cfg.MODEL.ROI_MASK_HEAD.NAME
    return bool(
        cfg.MODEL.MASK_ON
        and name in ROI_MASK_HEAD_REGISTRY
        and getattr(ROI_MASK_HEAD_REGISTRY.get(name), "has_contrast_loss", False)
    )


# The keyword arguments of both DCL mask heads for the ``CONTRAST_LOSS`` keys, as the original
# ContrastConvUpsampleHead takes them: ``contrast_loss_weight``, ``contrast_num_samples``, ...
CONTRAST_KEYWORDS = tuple(f"contrast_{key.lower()}" for key in DCL_DEFAULTS)


def contrast_loss_arguments(cfg: CfgNode) -> dict:
    """The ``CONTRAST_LOSS`` keys as keyword arguments of :class:`DenseContrastiveLoss`
    (``LOSS_WEIGHT`` -> ``loss_weight``, ...)."""
    c = cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS
    return {key.lower(): c[key] for key in DCL_DEFAULTS}


def contrast_head_arguments(cfg: CfgNode) -> dict:
    """The ``CONTRAST_LOSS`` keys, checked (:func:`check_dcl_config`), as the ``contrast_*``
    keyword arguments of the DCL mask heads (:data:`CONTRAST_KEYWORDS`): both heads' ``from_config``."""
    check_dcl_config(cfg)
    return {f"contrast_{key}": value for key, value in contrast_loss_arguments(cfg).items()}


def record_contrast_stats(result) -> None:
    """Put a step's ``dcl/num_rois`` and ``dcl/num_valid_rois`` into the event storage."""
    storage = get_event_storage()
    storage.put_scalar("dcl/num_rois", result.num_rois)
    storage.put_scalar("dcl/num_valid_rois", result.num_valid_rois)


def check_dcl_config(cfg: CfgNode) -> None:
    """Validate the DCL keys of a merged config before any model is built.

    Raises:
        ValueError: which key is wrong and why (unknown ``LOSS_FUNC``, non-positive values).
    """
    if "CONTRAST_LOSS" not in cfg.MODEL.ROI_MASK_HEAD:
        raise ValueError("config has no MODEL.ROI_MASK_HEAD.CONTRAST_LOSS: call dcl.model.heads.add_dcl_config(cfg)")
    c = cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS
    prefix = DCL_KEY_PREFIX
    if c.LOSS_FUNC not in LOSS_FUNCTIONS:
        raise ValueError(f"{prefix}LOSS_FUNC {c.LOSS_FUNC!r} is unknown; known: {', '.join(sorted(LOSS_FUNCTIONS))}")
    for key, ok in (
        ("LOSS_WEIGHT", c.LOSS_WEIGHT >= 0),
        ("NUM_SAMPLES", c.NUM_SAMPLES >= 1),
        ("TEMPERATURE", c.TEMPERATURE > 0),
        ("MAX_INSTANCES", c.MAX_INSTANCES >= 0),
    ):
        if not ok:
            raise ValueError(f"{prefix}{key} {c[key]!r} is out of range")
    if not isinstance(c.WITH_PROJ, bool):
        raise ValueError(f"{prefix}WITH_PROJ must be True or False, got {c.WITH_PROJ!r}")


@ROI_MASK_HEAD_REGISTRY.register()
class ContrastConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """Mask R-CNN's conv-upsample mask head plus the dense contrastive loss in training.

    Submodules: those of :class:`MaskRCNNConvUpsampleHead` (``mask_fcn*``, ``deconv``,
    ``deconv_relu``, ``predictor``) and ``contrast_loss`` (a :class:`DenseContrastiveLoss`,
    holding ``proj_head`` when ``WITH_PROJ``), the original implementation's names.
    """

    has_contrast_loss = True

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        conv_norm="",
        contrast_loss_weight: float = DCL_DEFAULTS["LOSS_WEIGHT"],
        contrast_num_samples: int = DCL_DEFAULTS["NUM_SAMPLES"],
        contrast_temperature: float = DCL_DEFAULTS["TEMPERATURE"],
        contrast_with_proj: bool = DCL_DEFAULTS["WITH_PROJ"],
        contrast_max_instances: int = DCL_DEFAULTS["MAX_INSTANCES"],
        contrast_loss_func: str = DCL_DEFAULTS["LOSS_FUNC"],
        **kwargs,
    ):
        """
        Args:
            input_shape, num_classes, conv_dims, conv_norm, **kwargs: as for
                :class:`MaskRCNNConvUpsampleHead` (``kwargs``: ``loss_weight`` of ``loss_mask``,
                ``vis_period``).
            contrast_loss_weight, contrast_num_samples, contrast_temperature, contrast_with_proj,
                contrast_max_instances, contrast_loss_func: the ``CONTRAST_LOSS`` keys
                ``LOSS_WEIGHT``, ``NUM_SAMPLES``, ``TEMPERATURE``, ``WITH_PROJ``,
                ``MAX_INSTANCES``, ``LOSS_FUNC`` (see :class:`dcl.model.loss.DenseContrastiveLoss`).
        """
        super().__init__(input_shape, num_classes=num_classes, conv_dims=conv_dims, conv_norm=conv_norm, **kwargs)
        # Registered after `predictor`: nn.Sequential iteration would run it, so `layers`
        # below names the parent's layers explicitly.
        self.contrast_loss = DenseContrastiveLoss(
            conv_dims[-1],
            loss_weight=contrast_loss_weight,
            num_samples=contrast_num_samples,
            temperature=contrast_temperature,
            with_proj=contrast_with_proj,
            max_instances=contrast_max_instances,
            loss_func=contrast_loss_func,
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), **contrast_head_arguments(cfg)}

    def mask_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features DCL acts on: after the convs, the deconvolution and its ReLU.

        Args:
            x: (B, C_in, P, P) pooled RoI features.

        Returns:
            (B, conv_dims[-1], 2P, 2P).
        """
        for layer in self.conv_norm_relus:
            x = layer(x)
        return self.deconv_relu(self.deconv(x))

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, num_classes, 2P, 2P): exactly the parent's layers, in its order."""
        return self.predictor(self.mask_features(x))

    def forward(self, x: torch.Tensor, instances: List[Instances], targets: Optional[List[Instances]] = None):
        """
        Args:
            x: (B, C_in, P, P) pooled features of the B RoIs.
            instances: per image, in training the foreground proposals (``proposal_boxes``,
                ``gt_classes``, ``gt_masks``), B in total; in inference the predicted boxes.
            targets: per image, the ground truth (accepted for heads that need image-level GT;
                DCL uses each RoI's matched GT mask from ``instances``).

        Returns:
            In training ``{"loss_mask", "loss_contrast"}``; in inference ``instances`` with
            ``pred_masks``, exactly as :class:`MaskRCNNConvUpsampleHead`.
        """
        if not self.training:
            return super().forward(x, instances)
        features = self.mask_features(x)
        logits = self.predictor(features)
        losses = {"loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight}
        gt_masks = self._contrast_gt_masks(instances, features.shape[-1], features.device)
        result = self.contrast_loss(features, gt_masks)
        record_contrast_stats(result)
        losses["loss_contrast"] = result.loss
        return losses

    def _contrast_gt_masks(self, instances: List[Instances], side: int, device: torch.device) -> torch.Tensor:
        """GT mask of each of the first ``max_instances`` RoIs, cropped to its proposal box.

        Returns:
            BoolTensor (min(B, max_instances), side, side), rows in the order of ``x``.
        """
        remaining = self.contrast_loss.max_instances
        masks = []
        for per_image in instances:
            if remaining <= 0:
                break
            take = min(len(per_image), remaining)
            if take == 0:
                continue
            boxes = per_image.proposal_boxes.tensor[:take]
            masks.append(per_image.gt_masks[:take].crop_and_resize(boxes, side).to(device=device))
            remaining -= take
        if not masks:
            return torch.zeros(0, side, side, dtype=torch.bool, device=device)
        gt_masks = torch.cat(masks, dim=0)
        # BitMasks and PolygonMasks give bool; other mask types may rasterise to float.
        return gt_masks if gt_masks.dtype == torch.bool else gt_masks > 0.5


@ROI_HEADS_REGISTRY.register()
class ContrastRoIHeads(StandardROIHeads):
    """StandardROIHeads that passes the image-level ground truth to the mask head in training.

    With a mask head whose ``forward`` has no ``targets`` argument (e.g. the plain
    ``MaskRCNNConvUpsampleHead``) it behaves exactly like :class:`StandardROIHeads`.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._mask_head_takes_targets = self.mask_on and (
            "targets" in inspect.signature(self.mask_head.forward).parameters
        )

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See :meth:`StandardROIHeads.forward`; in training the mask head also gets ``targets``."""
        if not self.training:
            return super().forward(images, features, proposals, targets)
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals)
        # As in StandardROIHeads: the proposals (boxes refined in place when
        # train_on_pred_boxes) feed the mask and keypoint heads.
        losses.update(self._forward_mask(features, proposals, targets))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_mask(
        self,
        features: Dict[str, torch.Tensor],
        instances: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        if not (self.training and self.mask_on and self._mask_head_takes_targets):
            return super()._forward_mask(features, instances)
        # Same as StandardROIHeads._forward_mask, plus `targets` for the head.
        instances, _ = select_foreground_proposals(instances, self.num_classes)
        if self.mask_pooler is not None:
            pooled = self.mask_pooler(
                [features[f] for f in self.mask_in_features], [x.proposal_boxes for x in instances]
            )
        else:
            pooled = {f: features[f] for f in self.mask_in_features}
        return self.mask_head(pooled, instances, targets=targets)
