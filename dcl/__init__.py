"""dcl: Dense Contrastive Loss for instance segmentation (BMVC 2022), as a reproducible pipeline.

Packages, one job each, lowest first (an import goes only to a lower line; tests/test_layers.py):

- shared, top level: ``io`` (atomic output, strict input), ``names`` (labels), ``layout`` (path
  patterns), ``runs`` (a run: its record, its folder, its state), ``runrecord`` (``run.json``),
  ``slurm`` (the cluster job), ``progress``, ``argtypes``, ``compat`` (the only module that patches
  detectron2), ``info``, ``tracking`` (the optional experiment tracker: MLflow or W&B);
- ``dcl.model`` (the loss and the detectron2 heads) and ``dcl.data`` (datasets, weights);
- ``dcl.evaluation`` (mask AP and the segmentation-error analysis; no torch);
- ``dcl.training`` (``dcl train``), ``dcl.workflow`` (the experiment matrix, plan, cost, status;
  no torch) and ``dcl.report`` (tables and figures; no torch);
- ``cli``: the ``dcl`` command, which imports a subcommand's module only when it runs.
"""

__version__ = "0.1.0"
