"""Display labels and number formats: what the tables, figures, the README and report.tex
show for a name (dataset, initialisation, detector, method, network, metric) or a number (a mean,
a mean ± std, a difference, a CI, a p-value, seeds, a swept value).

One module that every writer of the report imports, so a label reads the same everywhere. Labels
come from :mod:`dcl.names`; a name it does not know is shown as it is. Numbers use fixed formats
(a typographic minus, a dash for no data), never the locale.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dcl import names

if TYPE_CHECKING:
    from dcl.report.analysis import PairedDifference, Summary

__all__ = [
    "DASH",
    "FAMILY_NAMES",
    "MARK",
    "dataset_name",
    "format_ci",
    "format_number",
    "format_p",
    "format_seeds",
    "format_signed",
    "format_summary",
    "format_value",
    "init_name",
    "is_missing",
    "method_name",
    "metric_name",
    "model_name",
    "network_name",
    "short_metric_name",
    "spec_method_name",
    "value_sort_key",
]

DASH = "—"  # no data
MARK = "†"  # fewer seeds than configured
FAMILY_NAMES = {"cityscapes": "Cityscapes", "segm": "COCO mask", "bbox": "COCO box"}


def dataset_name(dataset: str) -> str:
    return names.DATASETS.get(dataset, dataset)


def init_name(init: str) -> str:
    return names.INITS.get(init, init)


def model_name(model: str) -> str:
    """Detector families (experiments.json's `model`); rows of those other than Mask R-CNN carry the name."""
    return names.MODELS.get(model, model)


def method_name(method: str, model: str = "mask_rcnn", named: bool = False) -> str:
    """``Baseline`` / ``DCL`` for Mask R-CNN; ``RefineMask`` / ``RefineMask + DCL`` for RefineMask.
    ``named``: Mask R-CNN's too (``Mask R-CNN`` / ``Mask R-CNN + DCL``), for rows beside other detectors."""
    if model != "mask_rcnn" or named:
        return model_name(model) + (" + DCL" if method == "dcl" else "")
    return names.METHODS.get(method, method)


def spec_method_name(spec: Any, named: bool = False) -> str:
    """A row's method: :func:`method_name`, or the label of a method of one's own (with its
    detector where rows of several detectors stand together, or it is not Mask R-CNN)."""
    label = getattr(spec, "method_label", None)
    if label is None:
        return method_name(spec.method, spec.model, named)
    return label if spec.model == "mask_rcnn" and not named else f"{label} ({model_name(spec.model)})"


def network_name(backbone: str, schedule: str | None) -> str:
    """``R101-FPN 3x``; the backbone alone for a recipe without a schedule name."""
    return f"{backbone} {schedule}" if schedule else backbone


def metric_name(metric: str) -> str:
    """``cityscapes.AP50`` -> ``Cityscapes AP50``, ``segm.APs`` -> ``COCO mask APs``."""
    family, _, stat = metric.partition(".")
    return f"{FAMILY_NAMES.get(family, family)} {stat}"


def short_metric_name(metric: str) -> str:
    """``cityscapes.AP50`` -> ``AP50`` (official), ``segm.AP`` -> ``mask AP``, ``bbox.AP`` -> ``box AP``."""
    family, _, stat = metric.partition(".")
    return {"cityscapes": "", "segm": "mask ", "bbox": "box "}.get(family, f"{family} ") + stat


# ----------------------------------------------------------------------------- number formats
def is_missing(value: float | None) -> bool:
    """No number: None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: float | None, digits: int = 2) -> str:
    """``37.10``, ``−0.21`` (a typographic minus); no number: a dash."""
    return DASH if is_missing(value) else f"{value:.{digits}f}".replace("-", "−")


def format_signed(value: float | None, digits: int = 2) -> str:
    # round first: a tiny negative difference is +0.00, not −0.00
    return DASH if is_missing(value) else f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def format_summary(summary: Summary, digits: int = 2) -> str:
    """``37.10 ± 0.21``; a single seed without ``±``; no seeds as a dash."""
    if summary.n == 0 or is_missing(summary.mean):
        return DASH
    if summary.n == 1:
        return format_number(summary.mean, digits)
    return f"{format_number(summary.mean, digits)} ± {format_number(summary.std, digits)}"


def format_ci(difference: PairedDifference) -> str:
    """``[+0.10, +0.52]``; ``n/a`` with fewer than 2 pairs."""
    if is_missing(difference.ci_low):
        return "n/a"
    return f"[{format_signed(difference.ci_low)}, {format_signed(difference.ci_high)}]"


def format_p(p_value: float) -> str:
    """``0.012``, ``<0.001``; ``n/a`` without a test."""
    if is_missing(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def format_seeds(n: int, expected: int) -> str:
    """``3/3``; ``2/3†`` when fewer seeds have results than configured."""
    return f"{n}/{expected}" + (MARK if n < expected else "")


def value_sort_key(value: Any) -> tuple:
    """Swept values in order: booleans (off, on), then numbers, then strings."""
    if isinstance(value, bool):
        return (0, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def format_value(value: Any) -> str:
    """A swept hyper-parameter value: ``on``/``off``, ``0.4``, ``2``, a string as it is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
