"""The experiment matrix, on a login node: ``experiments`` (the workflow config, its runs and their
``dcl train`` command lines; ``dcl plan``), ``cost`` (GPU-hours, chunks and disk of a plan),
``status`` (``dcl status``: where every run stands).

The Snakefile imports this package. May import: ``data.weights`` (where a checkpoint is stored),
``model.contrast_config`` (plain data) and the shared top-level modules. Never torch or detectron2,
nor the training or report packages.
"""
