"""What ``dcl report`` writes: ``tables/{name}.{format}`` and ``figures/{name}.{format}``.

Plain data, so the Snakefile (``workflow/rules/report.smk``) declares the outputs without loading
pandas or matplotlib, and so the report's modules read the names without importing the package's
``__init__`` back (no import cycle, not even a late one).
"""

from __future__ import annotations

__all__ = ["FIGURE_FORMATS", "FIGURE_NAMES", "TABLE_FORMATS", "TABLE_NAMES"]

TABLE_NAMES = ("main_results", "dcl_vs_baseline", "error_analysis", "ablations", "reproduction", "run_inventory")
TABLE_FORMATS = ("md", "tex", "csv", "html")
FIGURE_NAMES = ("error_breakdown", "ablations", "training_curves", "reproduced_vs_published")
FIGURE_FORMATS = ("png", "pdf")
