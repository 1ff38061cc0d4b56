"""A DCL mask head beside detectron2's plain one, and RoI training instances, for the head tests
(tests/model/test_heads.py) and the GPU checks (tests/training/test_gpu.py)."""

from __future__ import annotations

import dcl.compat  # noqa: F401  (before detectron2)
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from dcl.model.heads import ContrastConvUpsampleHead

# The projection head's parameters: what a DCL head has beyond the plain head's state_dict.
PROJ_KEYS = {f"contrast_loss.proj_head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def make_heads(with_proj=True, channels=16, num_classes=3, **contrast):
    torch.manual_seed(0)
    shape = ShapeSpec(channels=channels, height=14, width=14)
    plain = MaskRCNNConvUpsampleHead(shape, num_classes=num_classes, conv_dims=[channels] * 3)
    ours = ContrastConvUpsampleHead(
        shape, num_classes=num_classes, conv_dims=[channels] * 3, contrast_with_proj=with_proj, **contrast
    )
    incompatible = ours.load_state_dict(plain.state_dict(), strict=False)
    assert set(incompatible.missing_keys) == (PROJ_KEYS if with_proj else set())
    assert not incompatible.unexpected_keys
    return plain, ours


def training_instances(image_size=64, counts=(4, 3), polygons=False, seed=0):
    """Per image: foreground proposals with matched GT (class, mask), as the RoI heads pass them."""
    g = torch.Generator().manual_seed(seed)
    result = []
    for count in counts:
        boxes, masks, polys = [], torch.zeros(count, image_size, image_size, dtype=torch.bool), []
        for i in range(count):
            x0, y0 = torch.randint(0, image_size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(12, image_size // 2, (2,), generator=g).tolist()
            masks[i, y0 : y0 + h, x0 : x0 + w] = True
            polys.append([[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]])
            # proposals a little off the GT box, as real ones are
            boxes.append([x0 - 2.0, y0 + 1.0, x0 + w + 3.0, y0 + h - 1.0])
        inst = Instances((image_size, image_size))
        inst.proposal_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.randint(0, 3, (count,), generator=g)
        inst.gt_masks = PolygonMasks(polys) if polygons else BitMasks(masks)
        result.append(inst)
    return result
