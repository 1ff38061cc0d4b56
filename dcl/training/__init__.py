"""``dcl train``: detectron2 training made resumable, pre-emptible and recorded.

``train`` (the command, a drop-in for ``train_net.py``), ``options`` (its flags), ``config`` (the
detectron2 config and its checks), ``engine`` (the trainer: checkpoints, evaluation, run record),
``sampler`` (the resumable data order), ``preemption`` (stop signals, exit 75), ``early_signals``
(signals before torch is imported), ``launch`` (worker processes of a distributed run),
``cityscapes_evaluator`` (the official Cityscapes AP as a detectron2 evaluator).

May import: the model, data and evaluation packages and the shared top-level modules. Never the
workflow or report packages.
"""
