"""The model: the dense contrastive loss and the detectron2 heads that train with it.

``loss`` (the loss, plain PyTorch), ``heads`` (the DCL ROI heads and mask head for Mask R-CNN,
registered in detectron2's registries), ``refinemask`` (RefineMask's mask branch, with and without
DCL), ``contrast_config`` (the ``MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*`` keys and defaults, plain
data).

May import: torch, detectron2 (through ``dcl.compat``), the shared top-level modules. Never the
training, workflow or report packages. Nothing is imported here, so the plain-data
``contrast_config`` stays importable without torch.
"""
