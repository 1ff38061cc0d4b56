"""Datasets and weights: what goes into a training and where it lives on disk.

``datasets`` (the ``dcl data`` command and detectron2 catalog registration), ``toydata`` (the
synthetic COCO and Cityscapes datasets), ``coco`` (strict COCO ground truth / results loading and
RLE helpers), ``cityscapes`` (gtFine to COCO, and the official instance-level AP), ``weights``
(``dcl weights``: checkpoints in a local weights directory).

May import: the shared top-level modules; detectron2 only inside the functions that register
datasets. Never the model, training, evaluation, workflow or report packages.
"""
