"""The generated ``RESULTS_DIR/README.md``: what was reproduced, what was not, what is missing.

Plain Markdown, no timestamps or absolute paths (the file is byte-identical when nothing changed).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dcl.report.analysis import CONFIDENCE, PAIRED_TEST, Comparison, Reproduction
from dcl.report.outputs import FIGURE_NAMES
from dcl.runs import FOLDER_STATES, RunResult, status_totals
from dcl.report.labels import (
    dataset_name,
    format_ci,
    format_number,
    format_p,
    format_signed,
    format_summary,
    init_name,
    method_name,
    metric_name,
)
from dcl.report.table import Table

__all__ = ["FIGURE_TITLES", "readme"]

FIGURE_TITLES = {
    "error_breakdown": "Error breakdown (baseline vs DCL, corrected and legacy semantics)",
    "ablations": "AP against each ablated hyper-parameter",
    "training_curves": "Training curves (total loss, loss_mask, loss_contrast, learning rate, validation AP)",
    "reproduced_vs_published": "Reproduced vs published AP",
}
_VERDICT_SECTIONS = (
    ("reproduced", "Reproduced"),
    ("not reproduced", "Not reproduced"),
    ("cannot be judged", "Cannot be judged yet"),
    ("not in matrix", "Not in this experiment matrix"),
    ("not reproducible", "Listed, but not reproducible by this pipeline"),
)


def _describe(item: Reproduction) -> str:
    entry = item.entry
    what = (
        f"{dataset_name(entry.dataset)}, {init_name(entry.init)} init, {method_name(entry.method, entry.model)} "
        f"({entry.detector}), {metric_name(entry.metric)}: published {format_number(entry.value, 1)}"
    )
    if item.experiment is None:
        return f"{what}: {item.reason}"
    if item.experiment.spec.kind == "released":
        seeds = "released checkpoint"
    else:
        seeds = f"{item.summary.n}/{item.experiment.expected} seeds"
    measured = f"measured {format_summary(item.summary)} ({seeds})" if item.summary.n else f"no results yet ({seeds})"
    return f"{what}; `{item.experiment.name}` {measured}: {item.reason}"


def _runs_section(results: Sequence[RunResult], occlusion: Mapping[str, Any] | None) -> list[str]:
    """Runs per status, the unfinished ones with why, and whether the occlusion subset was used."""
    lines = [f"{len(results)} runs expected: " + status_totals(results) + "."]
    unfinished = [r for r in results if r.status != "finished"]
    if unfinished:
        lines += ["", "Not finished (tables use only runs with results, and say how many seeds they have):", ""]
        for result in sorted(
            unfinished, key=lambda r: (FOLDER_STATES.index(r.status), r.expected.experiment, r.expected.seed)
        ):
            lines.append(
                f"- `{result.expected.experiment}` seed {result.expected.seed}: **{result.status}**: {result.reason}"
            )
    lines += ["", "Every run: [run inventory](tables/run_inventory.md).", ""]
    if occlusion is not None:
        if occlusion["used"]:
            lines += [
                f"COCO runs are also evaluated and error-analysed on the occlusion subset `{occlusion['path']}` "
                "(COCO-OCC, from their val predictions): the OCC AP column and the occlusion error tables.",
                "",
            ]
        else:
            lines += [
                f"Note: no occlusion subset (COCO-OCC) at `{occlusion['path']}`, so COCO runs have no "
                "occlusion results; put the file there and run the workflow again to add them.",
                "",
            ]
    return lines


def _published_section(reproduction_rows: Sequence[Reproduction]) -> list[str]:
    """The verdict rule and each published number under its verdict."""
    lines = [
        "## Published numbers",
        "",
        "A **trained** experiment reproduces a published number when all its configured seeds have results, "
        "there are at least 2, and |mean − published| ≤ 2 × the sample standard deviation over seeds: "
        "the paper reports a single training run, so the question is whether that number is a plausible "
        "draw from our seed distribution. A **released** checkpoint (evaluated, not trained) reproduces it "
        "when its value rounds to the published one at the published precision (±0.05 for a number given "
        "to 0.1). Published numbers and their sources: `results/published.yaml`.",
        "",
    ]
    for verdict, heading in _VERDICT_SECTIONS:
        items = [r for r in reproduction_rows if r.verdict == verdict]
        if items:
            lines += [f"### {heading} ({len(items)})", ""]
            lines += [f"- {_describe(item)}" for item in items]
            lines.append("")
    if not reproduction_rows:
        lines += ["No published numbers listed.", ""]
    lines += ["Details: [reproduction table](tables/reproduction.md).", ""]
    return lines


def _comparison_section(comparisons: Sequence[Comparison]) -> list[str]:
    """DCL − baseline on each headline AP."""
    headline = [c for c in comparisons if c.metric == c.dcl.spec.metric]
    lines = ["## DCL versus baseline", ""]
    if headline:
        lines += [
            f"DCL − baseline on the headline AP; seeds paired by seed index; {CONFIDENCE:.0%} CI from the "
            f"t distribution; p from a {PAIRED_TEST}.",
            "",
        ]
        for comparison in headline:
            spec, difference = comparison.dcl.spec, comparison.difference
            lines.append(
                f"- {dataset_name(spec.dataset)}, {init_name(spec.init)} init ({spec.group}), "
                f"{metric_name(comparison.metric)}: Δ = {format_signed(difference.mean)}, "
                f"{CONFIDENCE:.0%} CI {format_ci(difference)}, p = {format_p(difference.p_value)}, "
                f"{difference.n} pair{'' if difference.n == 1 else 's'} "
                f"(`{comparison.dcl.name}` − `{comparison.baseline.name}`)"
            )
    else:
        lines.append("No DCL experiment with a matching baseline (same dataset, init and group).")
    lines += ["", "All metrics: [DCL versus baseline](tables/dcl_vs_baseline.md).", ""]
    return lines


def _outputs_section(tables: Sequence[Table], figure_reasons: Mapping[str, str]) -> list[str]:
    """Links to every table (four formats) and figure (two), and why a figure has no data."""
    lines = ["## Tables", "", "Each as Markdown, LaTeX (booktabs, `\\input` it), CSV and HTML:", ""]
    for table in tables:
        lines.append(
            f"- [{table.title}](tables/{table.name}.md) "
            f"([tex](tables/{table.name}.tex), [csv](tables/{table.name}.csv), [html](tables/{table.name}.html))"
            + ("" if table.rows or table.parts else f": no data ({table.empty})")
        )
    lines += ["", "## Figures", "", "Each as PNG and PDF:", ""]
    for name in FIGURE_NAMES:
        reason = figure_reasons.get(name, "")
        lines.append(
            f"- [{FIGURE_TITLES[name]}](figures/{name}.png) ([pdf](figures/{name}.pdf))"
            + (f": **no data** ({reason}); the file is a labelled placeholder" if reason else "")
        )
    return lines


def readme(
    preset: str,
    results: Sequence[RunResult],
    reproduction_rows: Sequence[Reproduction],
    comparisons: Sequence[Comparison],
    tables: Sequence[Table],
    figure_reasons: Mapping[str, str],
    occlusion: Mapping[str, Any] | None = None,
) -> str:
    """The summary page (Markdown). ``occlusion``: experiments.json's ``occlusion_subset``."""
    lines = [
        f"# Reproduction summary: `{preset or 'results'}`",
        "",
        "Generated by `dcl report` from `experiments.json` and the run folders under `runs/`. Do not edit: "
        "re-run `dcl report` (the workflow's last step) to update it.",
        "",
        "## Runs",
        "",
    ]
    lines += _runs_section(results, occlusion)
    lines += _published_section(reproduction_rows)
    lines += _comparison_section(comparisons)
    lines += _outputs_section(tables, figure_reasons)
    return "\n".join(lines) + "\n"
