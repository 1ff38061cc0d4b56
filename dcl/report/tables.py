"""The report's tables: one :class:`Table` model, four deterministic renderers, six builders.

Every table is written as Markdown (for people and GitHub), LaTeX (``booktabs``, a complete
``table`` float to ``\\input``), CSV (raw numbers for machines: means, stds and counts in their
own columns) and HTML (what Snakemake's report shows inline). Renderers use fixed number formats
and never timestamps, so an unchanged input gives byte-identical files.

Display cells use a few Unicode signs (``±``, ``−``, ``Δ``, ``†``); the LaTeX renderer maps them
to LaTeX and escapes everything else (``_``, ``&``, ``%`` ...).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from dcl import names
from dcl.report.analysis import (
    CONFIDENCE,
    PAIRED_TEST,
    Comparison,
    ExperimentStats,
    PairedDifference,
    Reproduction,
    Summary,
    error_types,
    paired_difference,
    sort_key,
)
from dcl.report.inputs import FAMILY_STATS, PublishedEntry, RunResult, status_totals

__all__ = [
    "Column",
    "Table",
    "ablation_table",
    "comparison_table",
    "error_table",
    "inventory_table",
    "latex_escape",
    "main_table",
    "reproduction_table",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "value_sort_key",
]

DASH = "—"  # no data
MARK = "†"  # fewer seeds than configured
COCO_AP_MARK = "*"  # a Cityscapes number published as COCO-style AP, not the official metric
FAMILY_NAMES = {"cityscapes": "Cityscapes", "segm": "COCO mask", "bbox": "COCO box"}
SEEDS_NOTE = f"{MARK} fewer seeds have results than configured; see the run inventory for why."


# Display labels come from dcl.names; a name it does not know is shown as it is.
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


def metric_name(metric: str) -> str:
    """``cityscapes.AP50`` -> ``Cityscapes AP50``, ``segm.APs`` -> ``COCO mask APs``."""
    family, _, stat = metric.partition(".")
    return f"{FAMILY_NAMES.get(family, family)} {stat}"


def short_metric_name(metric: str) -> str:
    """``cityscapes.AP50`` -> ``AP50`` (official), ``segm.AP`` -> ``mask AP``, ``bbox.AP`` -> ``box AP``."""
    family, _, stat = metric.partition(".")
    return {"cityscapes": "", "segm": "mask ", "bbox": "box "}.get(family, f"{family} ") + stat


# ----------------------------------------------------------------------------- number formats
def _nan(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_number(value: float | None, digits: int = 2) -> str:
    return DASH if _nan(value) else f"{value:.{digits}f}".replace("-", "−")


def fmt_signed(value: float | None, digits: int = 2) -> str:
    # round first: a tiny negative difference is +0.00, not −0.00
    return DASH if _nan(value) else f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def fmt_summary(summary: Summary, digits: int = 2) -> str:
    """``37.10 ± 0.21``; a single seed without ``±``; no seeds as a dash."""
    if summary.n == 0 or _nan(summary.mean):
        return DASH
    if summary.n == 1:
        return fmt_number(summary.mean, digits)
    return f"{fmt_number(summary.mean, digits)} ± {fmt_number(summary.std, digits)}"


def fmt_ci(difference: PairedDifference) -> str:
    if _nan(difference.ci_low):
        return "n/a"
    return f"[{fmt_signed(difference.ci_low)}, {fmt_signed(difference.ci_high)}]"


def fmt_p(p_value: float) -> str:
    if _nan(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def fmt_seeds(n: int, expected: int) -> str:
    return f"{n}/{expected}" + (MARK if n < expected else "")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


# ----------------------------------------------------------------------------- the table model
@dataclass(frozen=True)
class Column:
    """A displayed column; ``group`` is a shared super-header (e.g. an error type over
    "corrected" and "legacy"). ``tex=False`` leaves it out of the LaTeX table (identifiers a
    reader of the paper does not need; the CSV keeps them); ``width`` wraps long text in LaTeX."""

    key: str
    header: str
    align: str = "l"
    group: str = ""
    tex: bool = True
    width: str = ""  # LaTeX p{width} column, e.g. "5cm"


@dataclass
class Table:
    """One table in display form (``rows``: column key -> text) and raw form (``csv_rows``)."""

    name: str
    title: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, str]]
    csv_columns: list[str]
    csv_rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    empty: str = ""  # why there are no rows, shown instead of them
    long: bool = False  # LaTeX longtable (may break across pages)
    wide: bool = False  # LaTeX table* (full page width in two-column documents)
    # Several tables in one file (one per dataset, per swept parameter, ...): each part is
    # rendered as a table of its own (in LaTeX its own float); ``rows`` is then unused, and the
    # CSV holds the raw rows of all parts.
    parts: list["Table"] = field(default_factory=list)


def _column_groups(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """Consecutive columns sharing a group -> [(group, span), ...]."""
    spans: list[tuple[str, int]] = []
    for column in columns:
        if spans and column.group and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1] + 1)
        else:
            spans.append((column.group, 1))
    return spans


BOLD = "**"  # a display cell "**x**" is the best value of its column (bold in every format)


def _bold(text: str) -> str:
    return f"{BOLD}{text}{BOLD}"


def _split_bold(text: str) -> tuple[bool, str]:
    if len(text) > 4 and text.startswith(BOLD) and text.endswith(BOLD):
        return True, text[2:-2]
    return False, text


def to_markdown(table: Table, level: int = 2) -> str:
    if table.parts:
        lines = [f"{'#' * level} {table.title}", "", table.caption, ""]
        for part in table.parts:
            lines.append(to_markdown(part, level + 1))
        if table.notes:
            lines += [f"- {note}" for note in table.notes]
        return "\n".join(lines).rstrip("\n") + "\n"

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    headers = [f"{c.group} {c.header}" if c.group else c.header for c in table.columns]
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [f"{'#' * level} {table.title}", "", table.caption, ""]
    lines.append("| " + " | ".join(cell(h) for h in headers) + " |")
    lines.append("| " + " | ".join(rule[c.align] for c in table.columns) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(cell(row.get(c.key, "")) for c in table.columns) + " |")
    if not table.rows:
        lines += ["", f"*No data: {table.empty}*"]
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "−": r"$-$",
    "Δ": r"$\Delta$",
    "†": r"\textsuperscript{\dag}",
    "—": "---",
    "–": "--",
    "×": r"$\times$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and map the report's Unicode signs to LaTeX."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(text: str, breakable: bool = False) -> str:
    """Escape a cell; ``36.06 ± 0.41`` becomes ``36.06`` with a small ``±0.41`` to save width;
    ``**x**`` is bold; ``breakable`` (text in a fixed-width column) may break after ``/`` and ``_``."""
    bold, text = _split_bold(text)
    if bold:
        return f"\\textbf{{{_latex_cell(text)}}}"
    if breakable:
        return latex_escape(text).replace("/", "/\\allowbreak{}").replace("\\_", "\\_\\allowbreak{}")
    parts, position = [], 0
    for match in re.finditer(r"(\S+) ± (\S+)", text):
        parts.append(latex_escape(text[position : match.start()]))
        parts.append(f"{latex_escape(match.group(1))}{{\\scriptsize$\\pm${latex_escape(match.group(2))}}}")
        position = match.end()
    parts.append(latex_escape(text[position:]))
    return "".join(parts)


def to_latex(table: Table) -> str:
    """A complete ``table``/``table*`` (or ``longtable``) float with ``booktabs`` rules, caption
    and label, at ``\\footnotesize`` with narrow column separation, sized to fit a column (or the
    page width for ``table*``) without resizing; one float per part."""
    if table.parts:
        floats = []
        for index, part in enumerate(table.parts):
            last = index == len(table.parts) - 1
            named = Table(
                **{
                    **part.__dict__,
                    "name": f"{table.name}_{index + 1}",
                    "notes": part.notes + (table.notes if last else []),
                }
            )
            floats.append(to_latex(named))
        header = floats[0].split("\n", 2)[:2]
        return "\n".join(header) + "\n" + "\n".join(f.split("\n", 2)[2] for f in floats)
    columns = [c for c in table.columns if c.tex]
    spec = "".join(f"p{{{c.width}}}" if c.width else c.align for c in columns)
    label = f"tab:dcl-{table.name.replace('_', '-')}"
    caption = latex_escape(f"{table.title}. {table.caption}")
    header: list[str] = []
    groups = _column_groups(columns)
    if any(group for group, _ in groups):
        header.append(
            " & ".join(
                f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}" if group else " & ".join([""] * span)
                for group, span in groups
            )
            + r" \\"
        )
        start, rules = 1, []
        for group, span in groups:
            if group:
                rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        header.append(" ".join(rules))
    header.append(" & ".join(latex_escape(c.header) for c in columns) + r" \\")
    body = [" & ".join(_latex_cell(row.get(c.key, ""), bool(c.width)) for c in columns) + r" \\" for row in table.rows]
    if not table.rows:
        body = [f"\\multicolumn{{{len(columns)}}}{{c}}{{\\emph{{No data: {latex_escape(table.empty)}}}}} \\\\"]
    notes = [latex_escape(note) for note in table.notes]
    lines = [
        "% Generated by `dcl report`; do not edit: re-run `dcl report` instead.",
        "% Needs \\usepackage{booktabs}" + (" and \\usepackage{longtable}." if table.long else "."),
    ]
    if table.long:
        lines += [
            r"\begingroup\footnotesize\setlength{\tabcolsep}{3pt}",
            f"\\begin{{longtable}}{{{spec}}}",
            f"\\caption{{{caption}}}\\label{{{label}}} \\\\",
            r"\toprule",
            *header,
            r"\midrule",
            r"\endfirsthead",
            r"\toprule",
            *header,
            r"\midrule",
            r"\endhead",
            r"\bottomrule",
            r"\endfoot",
            *body,
            r"\end{longtable}",
            *[f"{note}\\par" for note in notes],
            r"\endgroup",
        ]
        return "\n".join(lines) + "\n"
    environment = "table*" if table.wide else "table"
    lines += [
        f"\\begin{{{environment}}}[tbp]",
        r"\centering",
        r"\footnotesize",
        r"\setlength{\tabcolsep}{3pt}",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if notes:
        lines += [r"\par\smallskip", r"{\raggedright", *[f"{note}\\par" for note in notes], "}"]
    lines.append(f"\\end{{{environment}}}")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.csv_columns)
    for row in table.csv_rows:
        writer.writerow([_csv_value(row.get(column)) for column in table.csv_columns])
    return buffer.getvalue()


def _html_cell(text: str) -> str:
    bold, text = _split_bold(text)
    return f"<b>{html.escape(text)}</b>" if bold else html.escape(text)


def to_html(table: Table) -> str:
    """A small self-contained page (Snakemake's report shows HTML results inline)."""
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(table.title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{padding:.2em .6em;border-bottom:1px solid #ccc;white-space:nowrap}"
        "thead th{border-bottom:2px solid #000}caption{text-align:left;margin-bottom:.5em}"
        "td.reason{white-space:normal;max-width:40em}</style>",
        "</head><body>",
    ]
    if table.parts:
        lines.append(f"<p><b>{html.escape(table.title)}.</b> {html.escape(table.caption)}</p>")
        for part in table.parts:
            lines += _html_table(part)
        lines += [f"<p>{html.escape(note)}</p>" for note in table.notes]
    else:
        lines += _html_table(table)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def _html_table(table: Table) -> list[str]:
    e = html.escape
    align = {"l": "left", "r": "right", "c": "center"}
    lines = [
        "<table>",
        f"<caption><b>{e(table.title)}.</b> {e(table.caption)}</caption>",
        "<thead>",
    ]
    groups = _column_groups(table.columns)
    if any(group for group, _ in groups):
        lines.append(
            "<tr>"
            + "".join(
                f'<th colspan="{span}">{e(group)}</th>' if span > 1 else f"<th>{e(group)}</th>"
                for group, span in groups
            )
            + "</tr>"
        )
    lines.append(
        "<tr>" + "".join(f'<th style="text-align:{align[c.align]}">{e(c.header)}</th>' for c in table.columns) + "</tr>"
    )
    lines += ["</thead>", "<tbody>"]
    for row in table.rows:
        cells = []
        for c in table.columns:
            css = ' class="reason"' if c.key == "reason" else ""
            cells.append(f'<td{css} style="text-align:{align[c.align]}">{_html_cell(row.get(c.key, ""))}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    if not table.rows:
        lines.append(f'<tr><td colspan="{len(table.columns)}"><i>No data: {e(table.empty)}</i></td></tr>')
    lines.append("</tbody></table>")
    lines += [f"<p>{e(note)}</p>" for note in table.notes]
    return lines


# ----------------------------------------------------------------------------- builders
_COCO_STATS = FAMILY_STATS["segm"]


def _published_for(
    published: Sequence[PublishedEntry], experiment: ExperimentStats, metric: str | None = None
) -> PublishedEntry | None:
    """The reproducible published number of ``experiment`` for ``metric`` (default: its headline)."""
    spec = experiment.spec
    for entry in published:
        if entry.reproducible and (entry.dataset, entry.init, entry.method, entry.model, entry.metric) == (
            spec.dataset,
            spec.init,
            spec.method,
            spec.model,
            metric or spec.metric,
        ):
            return entry
    return None


def _best_marks(rows: list[dict[str, str]], values: list[dict[str, float]], keys: Sequence[str]) -> None:
    """Bold the best (highest) mean of each column among ``rows`` (ties: all of them)."""
    for key in keys:
        column = [v.get(key, math.nan) for v in values]
        finite = [v for v in column if not _nan(v)]
        if len(finite) < 2 or max(finite) - min(finite) < 1e-9:
            continue  # nothing to single out
        best = max(finite)
        for row, value in zip(rows, column):
            if not _nan(value) and abs(value - best) < 1e-9 and row.get(key, DASH) != DASH:
                row[key] = _bold(row[key])


def _main_part(
    dataset: str, init: str, members: Sequence[ExperimentStats], published: Sequence[PublishedEntry]
) -> Table:
    """One dataset/initialisation in the paper's layout: per detector (Mask R-CNN, then e.g.
    RefineMask), a row per model, then that detector's DCL − baseline."""
    family = members[0].spec.family
    stats = [f"{family}.{stat}" for stat in FAMILY_STATS[family]]
    headers = {f"{family}.{stat}": stat for stat in FAMILY_STATS[family]}
    if family == "cityscapes":
        # The official metric first, COCO-style mask AP on the same predictions beside it.
        stats.append("segm.AP")
        headers["segm.AP"] = "COCO AP"
    if any(e.values.get("occ.segm.AP") for e in members):
        stats.append("occ.segm.AP")
        headers["occ.segm.AP"] = "OCC AP"
    columns = [
        Column("method", "Method"),
        Column("seeds", "Seeds", "r"),
        *[Column(m, headers[m], "r") for m in stats],
        Column("published", "Paper", "r"),
        Column("ci", f"{CONFIDENCE:.0%} CI", "r"),
        Column("p", "p", "r"),
    ]
    models = list(dict.fromkeys(e.spec.model for e in members))  # members are in table order
    named = len(models) > 1  # say which detector "Baseline" is
    rows, model_rows, means = [], [], []
    for model in models:
        own = [e for e in members if e.spec.model == model]
        for experiment in own:
            spec, n = experiment.spec, experiment.n_eval
            released = " (released)" if spec.group == "released" else ""
            row = {
                "method": method_name(spec.method, spec.model, named) + released,
                "seeds": fmt_seeds(n, experiment.expected),
            }
            mean_of: dict[str, float] = {}
            for metric in stats:
                summary = experiment.summary(metric) if metric in experiment.values else Summary(math.nan, math.nan, 0)
                row[metric] = fmt_summary(summary) if n else DASH
                mean_of[metric] = summary.mean
            entry = _published_for(published, experiment)
            # RefineMask's own Cityscapes baseline is published as COCO-style AP only.
            coco = _published_for(published, experiment, "segm.AP") if entry is None and "segm.AP" in stats else None
            if entry is not None:
                row["published"] = fmt_number(entry.value, 1)
            elif coco is not None:
                row["published"] = fmt_number(coco.value, 1) + COCO_AP_MARK
            else:
                row["published"] = DASH
            rows.append(row)
            model_rows.append(row)
            means.append(mean_of)
        baselines = [e for e in own if e.spec.method == "baseline" and e.spec.group == "main"]
        for dcl in (e for e in own if e.spec.method == "dcl" and e.spec.group == "main"):
            if len(baselines) != 1:
                continue
            name = (
                "DCL − baseline"
                if models == ["mask_rcnn"]
                else f"{method_name('dcl', model, named)} − {method_name('baseline', model, named)}"
            )
            row = {"method": name, "seeds": ""}
            for metric in stats:
                difference = paired_difference(baselines[0].values.get(metric, {}), dcl.values.get(metric, {}))
                row[metric] = fmt_signed(difference.mean)
                if metric == dcl.spec.metric:
                    row.update(
                        ci=fmt_ci(difference),
                        p=fmt_p(difference.p_value),
                        seeds=f"{difference.n} pair" + ("s" if difference.n != 1 else ""),
                    )
            rows.append(row)
    _best_marks(model_rows, means, stats)  # the rows are shared: bold shows in `rows`
    if all(row.get("published", DASH) == DASH for row in rows):
        columns = [c for c in columns if c.key != "published"]  # e.g. the toy data: nothing published
    headline = headers[members[0].spec.metric]
    what = (
        "Official Cityscapes instance-level AP and AP50 (cityscapesscripts), COCO-style mask AP beside"
        if family == "cityscapes"
        else "COCO mask AP"
    )
    return Table(
        name="main",
        title=f"{dataset_name(dataset)}, {init_name(init)} initialisation",
        caption=f"{what}; mean ± std over seeds; best in bold; DCL − baseline with the {CONFIDENCE:.0%} CI "
        f"and p-value of {headline}.",
        columns=columns,
        rows=rows,
        csv_columns=[],
        csv_rows=[],
        wide=len(stats) > 4,
    )


def main_table(
    experiments: Sequence[ExperimentStats], comparisons: Sequence[Comparison], published: Sequence[PublishedEntry]
) -> Table:
    """Main results: per dataset/init/method, mean ± std over seeds of the headline family's
    stats, the published number and the difference, and DCL minus baseline (headline metric)."""
    columns = [
        Column("dataset", "Dataset"),
        Column("init", "Init"),
        Column("method", "Method"),
        Column("experiment", "Experiment", tex=False),
        Column("metric", "AP type", tex=False),
        Column("seeds", "Seeds", "r"),
        *[Column(stat, stat, "r") for stat in _COCO_STATS],
        Column("published", "AP", "r", "Published"),
        Column("published_diff", "Δ", "r", "Published"),
        Column("delta", "Δ", "r", "DCL − baseline"),
        Column("ci", f"{CONFIDENCE:.0%} CI", "r", "DCL − baseline"),
        Column("p", "p", "r", "DCL − baseline"),
        Column("pairs", "pairs", "r", "DCL − baseline"),
    ]
    csv_columns = [
        "dataset",
        "init",
        "method",
        "model",
        "group",
        "kind",
        "experiment",
        "metric",
        "seeds_with_results",
        "seeds_expected",
        *[f"{stat}_{part}" for stat in _COCO_STATS for part in ("mean", "std")],
        "published",
        "published_diff",
        "delta_mean",
        "delta_ci_low",
        "delta_ci_high",
        "delta_p",
        "delta_pairs",
    ]
    headline = {(c.dcl.name, c.metric): c for c in comparisons}
    rows, csv_rows = [], []
    incomplete = False
    groups: dict[tuple[str, str], list[ExperimentStats]] = {}
    for experiment in experiments:
        spec = experiment.spec
        if spec.group == "ablation":
            continue
        groups.setdefault((spec.dataset, spec.init), []).append(experiment)
        n = experiment.n_eval
        incomplete |= n < experiment.expected
        row = {
            "dataset": dataset_name(spec.dataset),
            "init": init_name(spec.init),
            "method": method_name(spec.method, spec.model) + (" (released)" if spec.group == "released" else ""),
            "experiment": spec.experiment,
            "metric": FAMILY_NAMES.get(spec.family, spec.family),
            "seeds": fmt_seeds(n, experiment.expected),
        }
        raw: dict[str, Any] = {
            "dataset": spec.dataset,
            "init": spec.init,
            "method": spec.method,
            "model": spec.model,
            "group": spec.group,
            "kind": spec.kind,
            "experiment": spec.experiment,
            "metric": spec.metric,
            "seeds_with_results": n,
            "seeds_expected": experiment.expected,
        }
        for metric in experiment.stats:
            stat = metric.split(".", 1)[1]
            summary = experiment.summary(metric)
            row[stat] = fmt_summary(summary) if n else DASH
            raw[f"{stat}_mean"], raw[f"{stat}_std"] = summary.mean, summary.std
        entry = _published_for(published, experiment)
        if entry is not None:
            mean = experiment.summary(spec.metric).mean
            row["published"] = fmt_number(entry.value, 1)
            row["published_diff"] = fmt_signed(mean - entry.value)
            raw["published"], raw["published_diff"] = entry.value, mean - entry.value
        comparison = headline.get((spec.experiment, spec.metric))
        if comparison is not None:
            difference = comparison.difference
            row.update(
                delta=fmt_signed(difference.mean),
                ci=fmt_ci(difference),
                p=fmt_p(difference.p_value),
                pairs=str(difference.n),
            )
            raw.update(
                delta_mean=difference.mean,
                delta_ci_low=difference.ci_low,
                delta_ci_high=difference.ci_high,
                delta_p=difference.p_value,
                delta_pairs=difference.n,
            )
        rows.append(row)
        csv_rows.append(raw)
    notes = [
        "All numbers in %. Cityscapes: AP, AP50 are the official instance-level metric (cityscapesscripts), "
        "COCO AP the COCO-style mask AP of the same predictions; COCO: mask AP."
        + (
            " OCC AP: mask AP on the occlusion subset COCO-OCC, from the val predictions."
            if any("occ.segm.AP" in e.values for e in experiments)
            else ""
        ),
        "Cells: mean ± sample standard deviation (ddof=1) over the seeds with results; Seeds: "
        "seeds with results / seeds configured; the best mean of each column is in bold.",
        f"DCL − baseline: mean paired difference per column (seeds paired by seed index); "
        f"{CONFIDENCE:.0%} CI (t distribution of the mean paired difference) and p ({PAIRED_TEST}) "
        "of the headline AP; n/a with fewer than 2 pairs.",
    ]
    parts = [_main_part(dataset, init, members, published) for (dataset, init), members in groups.items()]
    if any(column.key == "published" for part in parts for column in part.columns):  # else no Paper column
        notes.append(
            "Paper: the published number (or detectron2's model zoo for baselines), see results/published.yaml; "
            "the CSV has mean − published."
        )
    if any(
        _published_for(published, e) is None and _published_for(published, e, "segm.AP") is not None
        for e in experiments
        if e.spec.family == "cityscapes"
    ):
        notes.append(
            f"Paper {COCO_AP_MARK}: published as COCO-style mask AP (compare with COCO AP), not the "
            "official Cityscapes metric."
        )
    if incomplete:
        notes.insert(0, SEEDS_NOTE)
    return Table(
        name="main_results",
        title="Main results",
        caption="Mask AP of the baselines (Mask R-CNN; RefineMask where configured) and DCL, one table per dataset "
        "and initialisation, over seeds, with the published numbers and the paired DCL − baseline difference "
        "of each detector.",
        columns=columns,
        rows=rows,
        csv_columns=csv_columns,
        csv_rows=csv_rows,
        notes=notes,
        empty="no main or released experiments in experiments.json",
        wide=True,
        parts=parts,
    )


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
    """DCL minus baseline for every metric column, paired by seed; one table per dataset."""
    columns = [
        Column("init", "Init"),
        Column("model", "Detector"),
        Column("group", "Group", tex=False),
        Column("metric", "Metric"),
        Column("baseline", "Baseline", "r"),
        Column("dcl", "DCL", "r"),
        Column("delta", "Δ", "r"),
        Column("ci", f"{CONFIDENCE:.0%} CI", "r"),
        Column("p", "p", "r"),
        Column("pairs", "Pairs", "r"),
    ]
    csv_columns = [
        "dataset",
        "init",
        "model",
        "group",
        "baseline_experiment",
        "dcl_experiment",
        "metric",
        "baseline_mean",
        "baseline_std",
        "baseline_n",
        "dcl_mean",
        "dcl_std",
        "dcl_n",
        "delta_mean",
        "delta_ci_low",
        "delta_ci_high",
        "delta_p",
        "delta_pairs",
        "paired_seeds",
    ]
    by_dataset: dict[str, list[dict[str, str]]] = {}
    csv_rows = []
    for comparison in comparisons:
        spec, difference = comparison.dcl.spec, comparison.difference
        base, dcl = comparison.baseline.summary(comparison.metric), comparison.dcl.summary(comparison.metric)
        by_dataset.setdefault(spec.dataset, []).append(
            {
                "init": init_name(spec.init),
                "model": model_name(spec.model),
                "group": spec.group,
                "metric": short_metric_name(comparison.metric),  # the dataset is beside it
                "baseline": f"{fmt_summary(base)} (n={base.n})",
                "dcl": f"{fmt_summary(dcl)} (n={dcl.n})",
                "delta": fmt_signed(difference.mean),
                "ci": fmt_ci(difference),
                "p": fmt_p(difference.p_value),
                "pairs": str(difference.n),
            }
        )
        csv_rows.append(
            {
                "dataset": spec.dataset,
                "init": spec.init,
                "model": spec.model,
                "group": spec.group,
                "baseline_experiment": comparison.baseline.name,
                "dcl_experiment": comparison.dcl.name,
                "metric": comparison.metric,
                "baseline_mean": base.mean,
                "baseline_std": base.std,
                "baseline_n": base.n,
                "dcl_mean": dcl.mean,
                "dcl_std": dcl.std,
                "dcl_n": dcl.n,
                "delta_mean": difference.mean,
                "delta_ci_low": difference.ci_low,
                "delta_ci_high": difference.ci_high,
                "delta_p": difference.p_value,
                "delta_pairs": difference.n,
                "paired_seeds": " ".join(str(s) for s in difference.seeds),
            }
        )
    notes = [
        "Baseline, DCL: mean ± sample std over each experiment's seeds with results (n).",
        f"Δ: mean of DCL − baseline over seeds present in both (seeds paired by seed index); "
        f"{CONFIDENCE:.0%} CI: t distribution of the mean paired difference; p: {PAIRED_TEST}; "
        "n/a with fewer than 2 pairs, and p n/a when all paired differences are equal.",
    ]
    parts = [
        Table(
            name="dcl_vs_baseline",
            title=dataset_name(dataset),
            caption="DCL − baseline per initialisation, detector and AP.",
            columns=columns,
            rows=rows,
            csv_columns=[],
            csv_rows=[],
            wide=True,
        )
        for dataset, rows in by_dataset.items()
    ]
    return Table(
        name="dcl_vs_baseline",
        title="DCL versus baseline",
        caption="Paired difference DCL − baseline for every reported AP (one table per dataset), per "
        "initialisation, detector and group.",
        columns=[Column("init", "Init")],
        rows=[],
        csv_columns=csv_columns,
        csv_rows=csv_rows,
        notes=notes,
        empty="no DCL experiment with a matching baseline (same dataset, init, detector and group) in experiments.json",
        wide=True,
        parts=parts,
    )


_LEGACY_GROUP = "legacy (original tool)"
_CORRECTED_GROUP = "corrected"


def _gt_note(members: Sequence[ExperimentStats], occ: bool) -> str:
    suffix = "_occ" if occ else ""
    files = {}
    for name in ("errors_legacy", "errors"):
        found = sorted({gt for e in members for gt in e.gt_files.get(name + suffix, set())})
        files[name] = ", ".join(found) if found else "not recorded"
    return f"GT files: legacy {files['errors_legacy']}; corrected {files['errors']}."


def _error_part(title: str, members: Sequence[ExperimentStats], types: Sequence[str], occ: bool) -> Table:
    """Rows: models; columns: AP, then the AP gain of each error type, legacy and corrected side by side."""
    columns = [Column("model", "Model"), Column("seeds", "Seeds", "r"), Column("ap", "AP", "r")]
    for group in (_LEGACY_GROUP, _CORRECTED_GROUP):
        columns += [Column(f"{t}/{group}", t, "r", group) for t in types]
    rows = []
    named = len({e.spec.model for e in members}) > 1  # say which detector "Baseline" is
    for experiment in members:
        spec = experiment.spec
        n, n_legacy = experiment.n_errors(False, occ), experiment.n_errors(True, occ)
        base = experiment.error_summary("baseline", legacy=True, occ=occ)
        if base.n == 0:
            base = experiment.error_summary("baseline", legacy=False, occ=occ)
        label = method_name(spec.method, spec.model, named) + f", {init_name(spec.init)}"
        if spec.group == "released":
            label += " (released)"
        elif spec.group == "ablation":
            parameter = spec.ablation.parameter.replace("_", " ").lower()
            label = f"{method_name('dcl', spec.model, named)}, {parameter} {fmt_value(spec.ablation.value)}"
        row = {"model": label, "seeds": fmt_seeds(min(n, n_legacy), experiment.expected), "ap": fmt_number(base.mean)}
        for group, legacy in ((_LEGACY_GROUP, True), (_CORRECTED_GROUP, False)):
            for error_type in types:
                row[f"{error_type}/{group}"] = fmt_number(experiment.error_summary(error_type, legacy, occ).mean)
        rows.append(row)
    return Table(
        name="errors",
        title=title,
        caption=_gt_note(members, occ),
        columns=columns,
        rows=rows,
        csv_columns=[],
        csv_rows=[],
        wide=len(types) > 3,
    )


def error_table(experiments: Sequence[ExperimentStats]) -> Table:
    """AP gain from removing each error type, legacy and corrected semantics side by side, one
    table per dataset (and one on the occlusion subset where there is one)."""
    types = error_types(experiments)
    csv_columns = [
        "dataset",
        "init",
        "method",
        "model",
        "group",
        "experiment",
        "seeds_expected",
        "seeds_corrected",
        "seeds_legacy",
        "ap_mean",
        "ap_std",
        *[
            f"{t}_{semantics}_{part}"
            for t in types
            for semantics in ("corrected", "legacy")
            for part in ("mean", "std")
        ],
        "gt_corrected",
        "gt_legacy",
    ]
    csv_rows = []
    incomplete = False
    # Baselines, DCL and released models first (the paper's comparison), ablation models after.
    ordered = sorted(experiments, key=lambda e: (e.spec.group == "ablation", sort_key(e.spec)))
    by_dataset: dict[str, list[ExperimentStats]] = {}
    for experiment in ordered:
        spec = experiment.spec
        n, n_legacy, expected = experiment.n_errors(False), experiment.n_errors(True), experiment.expected
        incomplete |= min(n, n_legacy) < expected
        if (n or n_legacy) and not is_base_point(experiment):  # a base point repeats its base's runs
            by_dataset.setdefault(spec.dataset, []).append(experiment)
        base = experiment.error_summary("baseline", legacy=False)
        if base.n == 0:
            base = experiment.error_summary("baseline", legacy=True)
        raw: dict[str, Any] = {
            "dataset": spec.dataset,
            "init": spec.init,
            "method": spec.method,
            "model": spec.model,
            "group": spec.group,
            "experiment": spec.experiment,
            "seeds_expected": expected,
            "seeds_corrected": n,
            "seeds_legacy": n_legacy,
            "ap_mean": base.mean,
            "ap_std": base.std,
            "gt_corrected": " ".join(sorted(experiment.gt_files.get("errors", ()))),
            "gt_legacy": " ".join(sorted(experiment.gt_files.get("errors_legacy", ()))),
        }
        for error_type in types:
            for semantics, legacy in (("corrected", False), ("legacy", True)):
                summary = experiment.error_summary(error_type, legacy)
                raw[f"{error_type}_{semantics}_mean"], raw[f"{error_type}_{semantics}_std"] = summary.mean, summary.std
        csv_rows.append(raw)
    parts = []
    for dataset, members in by_dataset.items():
        parts.append(_error_part(dataset_name(dataset), members, types, occ=False))
        occluded = [e for e in members if e.n_errors(False, True) or e.n_errors(True, True)]
        if occluded:
            parts.append(
                _error_part(f"{dataset_name(dataset)}, occlusion subset (COCO-OCC)", occluded, types, occ=True)
            )
    notes = [
        "AP: COCO mask AP measured by the error analysis (`dcl errors`, legacy GT) before removing errors; "
        "each error column: AP gain (percentage points) after removing that error type (A&B: several, in "
        "order), mean over seeds (standard deviations in the CSV).",
        "legacy: the original tool's semantics, with which the paper's error tables were made (an unmatched "
        "detection is treated as matched to the image's last GT; on Cityscapes, the GT of Detectron's "
        "conversion); corrected: an unmatched detection is left unchanged, on our default GT.",
    ]
    if incomplete:
        notes.insert(0, SEEDS_NOTE)
    return Table(
        name="error_analysis",
        title="Segmentation-error analysis",
        caption="AP gain from removing foreground false positives (fFP), background false positives (bFP) "
        "and false negatives (FN), per model; legacy and corrected semantics side by side.",
        columns=[Column("model", "Model")],
        rows=[],
        csv_columns=csv_columns,
        csv_rows=csv_rows if types else [],
        notes=notes,
        empty="no run has an errors.json or errors_legacy.json yet",
        wide=True,
        parts=parts if types else [],
    )


def value_sort_key(value: Any) -> tuple:
    """Swept values in order: booleans (off, on), then numbers, then strings."""
    if isinstance(value, bool):
        return (0, int(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def is_base_point(experiment: ExperimentStats) -> bool:
    """An ablation point whose value is its base experiment's own (it reuses the base's runs)."""
    ablation = experiment.spec.ablation
    return ablation is not None and experiment.spec.run_dir.startswith(f"runs/{ablation.base}/")


def reference_baseline(experiments: Sequence[ExperimentStats], base: str) -> ExperimentStats | None:
    """The main baseline (no DCL) of an ablation's base experiment: same dataset, init and detector."""
    spec = next((e.spec for e in experiments if e.name == base), None)
    if spec is None:
        spec = next((e.spec for e in experiments if e.spec.ablation and e.spec.ablation.base == base), None)
    matches = [
        e
        for e in experiments
        if spec is not None
        and e.spec.method == "baseline"
        and e.spec.group == "main"
        and (e.spec.dataset, e.spec.init, e.spec.model) == (spec.dataset, spec.init, spec.model)
    ]
    return matches[0] if len(matches) == 1 else None


def _ablation_part(parameter: str, members: Sequence[ExperimentStats], experiments: Sequence[ExperimentStats]) -> Table:
    metric = members[0].spec.metric
    columns = [
        Column("value", parameter.replace("_", " ").lower(), "r"),
        Column("seeds", "Seeds", "r"),
        Column("ap", metric_name(metric).replace("COCO mask ", "mask "), "r"),
    ]
    rows, means = [], []
    for experiment in members:
        summary = experiment.summary(metric)
        value = fmt_value(experiment.spec.ablation.value) + (" (base)" if is_base_point(experiment) else "")
        rows.append(
            {"value": value, "seeds": fmt_seeds(experiment.n_eval, experiment.expected), "ap": fmt_summary(summary)}
        )
        means.append({"ap": summary.mean})
    _best_marks(rows, means, ["ap"])
    bases = sorted({e.spec.ablation.base for e in members})
    baseline = reference_baseline(experiments, bases[0]) if len(bases) == 1 else None
    if baseline is not None:
        rows.append(
            {
                "value": "no DCL (baseline)",
                "seeds": fmt_seeds(baseline.n_eval, baseline.expected),
                "ap": fmt_summary(baseline.summary(metric)),
            }
        )
    return Table(
        name="ablation",
        title=parameter,
        caption=f"around {', '.join(bases)}",
        columns=columns,
        rows=rows,
        csv_columns=[],
        csv_rows=[],
    )


def ablation_table(experiments: Sequence[ExperimentStats]) -> Table:
    """Headline AP against each swept hyper-parameter."""
    columns = [
        Column("parameter", "Parameter"),
        Column("value", "Value", "r"),
        Column("experiment", "Experiment"),
        Column("base", "Base experiment"),
        Column("metric", "Metric"),
        Column("seeds", "Seeds", "r"),
        Column("ap", "AP", "r"),
    ]
    csv_columns = [
        "parameter",
        "key",
        "value",
        "base",
        "experiment",
        "dataset",
        "metric",
        "seeds_with_results",
        "seeds_expected",
        "mean",
        "std",
    ]
    ablations = sorted(
        (e for e in experiments if e.spec.ablation is not None),
        key=lambda e: (e.spec.ablation.parameter, e.spec.ablation.base, value_sort_key(e.spec.ablation.value), e.name),
    )
    rows, csv_rows = [], []
    incomplete = False
    for experiment in ablations:
        spec, ablation = experiment.spec, experiment.spec.ablation
        summary = experiment.summary(spec.metric)
        incomplete |= experiment.n_eval < experiment.expected
        rows.append(
            {
                "parameter": ablation.parameter,
                "value": fmt_value(ablation.value),
                "experiment": spec.experiment,
                "base": ablation.base,
                "metric": metric_name(spec.metric),
                "seeds": fmt_seeds(experiment.n_eval, experiment.expected),
                "ap": fmt_summary(summary),
            }
        )
        csv_rows.append(
            {
                "parameter": ablation.parameter,
                "key": ablation.key,
                # as written in experiments.json (2.0 stays 2.0, False is false)
                "value": ablation.value if isinstance(ablation.value, str) else json.dumps(ablation.value),
                "base": ablation.base,
                "experiment": spec.experiment,
                "dataset": spec.dataset,
                "metric": spec.metric,
                "seeds_with_results": experiment.n_eval,
                "seeds_expected": experiment.expected,
                "mean": summary.mean,
                "std": summary.std,
            }
        )
    by_parameter: dict[str, list[ExperimentStats]] = {}
    for experiment in ablations:
        by_parameter.setdefault(experiment.spec.ablation.parameter, []).append(experiment)
    parts = [_ablation_part(parameter, members, experiments) for parameter, members in by_parameter.items()]
    notes = [
        "AP in %: mean ± sample standard deviation (ddof=1) over the seeds with results; (base): the base "
        "experiment's own value; no DCL: the baseline of the same dataset, initialisation and detector; "
        "best in bold."
    ]
    if incomplete:
        notes.insert(0, SEEDS_NOTE)
    return Table(
        name="ablations",
        title="Ablations",
        caption="Headline AP of DCL for each value of each swept hyper-parameter "
        "(MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*), one sweep at a time around its base experiment.",
        columns=columns,
        rows=rows,
        csv_columns=csv_columns,
        csv_rows=csv_rows,
        notes=notes,
        empty="no ablation runs in experiments.json",
        parts=parts,
    )


def inventory_table(results: Sequence[RunResult]) -> Table:
    """Every expected run with its status, reason, progress, wall time and GPUs."""
    columns = [
        Column("experiment", "Experiment", width="2.6cm"),
        Column("seed", "Seed", "r"),
        Column("kind", "Kind"),
        Column("status", "Status"),
        Column("reason", "Reason", width="2.4cm"),
        Column("iterations", "Iterations", "r"),
        Column("wall", "Wall time", "r"),
        Column("gpus", "GPUs"),
    ]
    csv_columns = [
        "experiment",
        "seed",
        "kind",
        "group",
        "dataset",
        "init",
        "method",
        "run_dir",
        "status",
        "reason",
        "iteration",
        "max_iter",
        "wall_time_s",
        "gpu_type",
        "gpu_count",
    ]
    rows, csv_rows = [], []
    for result in sorted(results, key=lambda r: (sort_key(r.expected), r.expected.seed)):
        spec, info = result.expected, result.info or {}
        iteration, max_iter = info.get("iteration"), info.get("max_iter")
        gpus = info.get("gpus") or {}
        count, gpu_type = gpus.get("count"), gpus.get("type")
        if count == 0:
            gpu_text = "CPU"
        elif count is None and gpu_type is None:
            gpu_text = DASH
        else:
            gpu_text = " × ".join(str(part) for part in (count, gpu_type) if part is not None)
        rows.append(
            {
                "experiment": spec.experiment,
                "seed": str(spec.seed),
                "kind": spec.kind,
                "status": result.status,
                "reason": result.reason,
                "iterations": DASH
                if iteration is None
                else f"{iteration}" + ("" if max_iter is None else f"/{max_iter}"),
                "wall": fmt_duration(info.get("wall_time_s")),
                "gpus": gpu_text,
            }
        )
        csv_rows.append(
            {
                "experiment": spec.experiment,
                "seed": spec.seed,
                "kind": spec.kind,
                "group": spec.group,
                "dataset": spec.dataset,
                "init": spec.init,
                "method": spec.method,
                "run_dir": spec.run_dir,
                "status": result.status,
                "reason": result.reason,
                "iteration": iteration,
                "max_iter": max_iter,
                "wall_time_s": info.get("wall_time_s"),
                "gpu_type": gpu_type,
                "gpu_count": count,
            }
        )
    notes = [
        "Status: finished (all result files valid); running (run.json says so); incomplete (interrupted, "
        "stopped early, or a step's file not written yet); failed (training failed, or a file is "
        "unreadable, truncated or mistyped: the reason names it); missing (no results yet).",
        "Totals: " + status_totals(results) + f" of {len(results)} expected runs.",
        "Wall time: h:mm:ss summed over attempts (run.json).",
    ]
    return Table(
        name="run_inventory",
        title="Run inventory",
        caption="Every run the experiment matrix expects, with its status and, when not finished, why.",
        columns=columns,
        rows=rows,
        csv_columns=csv_columns,
        csv_rows=csv_rows,
        notes=notes,
        empty="experiments.json lists no runs",
        long=True,
    )


def reproduction_table(rows_in: Sequence[Reproduction]) -> Table:
    """Each published number with what this reproduction measured and the verdict."""
    columns = [
        Column("detector", "Detector", width="1.5cm"),
        Column("dataset", "Dataset"),
        Column("init", "Init"),
        Column("method", "Method"),
        Column("metric", "Metric"),
        Column("published", "Published", "r"),
        Column("experiment", "Experiment", tex=False),
        Column("seeds", "Seeds", "r", tex=False),
        Column("reproduced", "Reproduced", "r"),
        Column("diff", "Δ", "r"),
        Column("verdict", "Verdict", width="1.5cm"),
        Column("reason", "Why", width="2.2cm"),
    ]
    csv_columns = [
        "detector",
        "dataset",
        "init",
        "method",
        "metric",
        "published",
        "source",
        "experiment",
        "kind",
        "seeds_with_results",
        "seeds_expected",
        "mean",
        "std",
        "difference",
        "verdict",
        "reason",
    ]
    rows, csv_rows = [], []
    for item in rows_in:
        entry, experiment, summary = item.entry, item.experiment, item.summary
        rows.append(
            {
                "detector": entry.detector,
                "dataset": dataset_name(entry.dataset),
                "init": init_name(entry.init),
                "method": method_name(entry.method),
                "metric": short_metric_name(entry.metric),
                "published": fmt_number(entry.value, 1),
                "experiment": experiment.name if experiment else DASH,
                "seeds": fmt_seeds(summary.n, experiment.expected) if experiment else DASH,
                "reproduced": fmt_summary(summary),
                "diff": fmt_signed(item.difference) if summary.n else DASH,
                "verdict": item.verdict,
                "reason": item.reason,
            }
        )
        csv_rows.append(
            {
                "detector": entry.detector,
                "dataset": entry.dataset,
                "init": entry.init,
                "method": entry.method,
                "metric": entry.metric,
                "published": entry.value,
                "source": entry.source,
                "experiment": experiment.name if experiment else None,
                "kind": experiment.spec.kind if experiment else None,
                "seeds_with_results": summary.n,
                "seeds_expected": experiment.expected if experiment else None,
                "mean": summary.mean,
                "std": summary.std,
                "difference": item.difference if summary.n else None,
                "verdict": item.verdict,
                "reason": item.reason,
            }
        )
    notes = [
        "Trained experiments: reproduced when all configured seeds have results, there are at least 2, "
        "and |mean − published| ≤ 2 × sample std over seeds (the paper reports a single run: is it a "
        "plausible draw from our seed distribution?).",
        "Released checkpoints (evaluation only): reproduced when the value rounds to the published one "
        "at its precision (|value − published| ≤ 0.05 for a number given to 0.1).",
        "Sources of the published numbers: results/published.yaml.",
    ]
    return Table(
        name="reproduction",
        title="Published numbers and their reproduction",
        caption="Every published number next to this reproduction's mean ± std over seeds and the verdict.",
        columns=columns,
        rows=rows,
        csv_columns=csv_columns,
        csv_rows=csv_rows,
        notes=notes,
        empty="results/published.yaml lists no numbers",
        wide=True,
    )
