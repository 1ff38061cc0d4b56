"""Scoring predictions: ``evaluate`` (``dcl evaluate``: COCO mask/box AP, the official Cityscapes
AP) and ``errors`` (``dcl errors``: the fFP / bFP / FN segmentation-error analysis).

Works on COCO JSON files only. May import: the ``data`` package (COCO loading, the Cityscapes AP)
and the shared top-level modules. Never torch or detectron2, nor the training, workflow or report
packages.
"""
