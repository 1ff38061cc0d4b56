"""dcl: Dense Contrastive Loss for instance segmentation (BMVC 2022), as a reproducible pipeline.

Modules (one job each): ``loss`` (the loss, torch only), ``modeling`` (detectron2 heads and config
keys), ``train`` (the training entry point), ``datasets`` (dataset registration and checks),
``toydata`` (synthetic datasets), ``evaluation`` (mask AP), ``errors`` (the fFP/bFP/FN analysis),
``report`` (tables and figures), ``compat`` (shims for the installed detectron2), ``cli``.
"""

__version__ = "0.1.0"
