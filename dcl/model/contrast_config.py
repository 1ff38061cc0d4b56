"""The DCL config keys, ``MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*``, and their published defaults
(docs/method.md, "DCL configuration keys and defaults"). Plain data: :func:`dcl.model.heads.add_dcl_config` adds them
to detectron2's config, and the workflow (:mod:`dcl.workflow.experiments`, which imports no torch) compares
ablation values with them.
"""

from __future__ import annotations

__all__ = ["DCL_DEFAULTS", "DCL_KEY_PREFIX"]

DCL_KEY_PREFIX = "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS."
DCL_DEFAULTS: dict[str, object] = {
    "LOSS_WEIGHT": 1.2,
    "NUM_SAMPLES": 32,
    "TEMPERATURE": 0.07,
    "WITH_PROJ": True,
    "MAX_INSTANCES": 100,
    "LOSS_FUNC": "dense_contrast_loss",
}
