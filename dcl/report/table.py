"""The report's table model and its four deterministic renderers.

A :class:`Table` is one table in display form (text cells, columns with headers, groups and
alignment) and raw form (the CSV's columns and values), with its title, caption and notes, or a
file of several tables (``parts``). A builder (:mod:`dcl.report.tables`) defines each column once,
as a :class:`Column` with its raw CSV value and its display text, and turns its records into both
forms (:func:`flat_table`; a file of several tables: :func:`part_table` per part,
:func:`parts_table` for the file and its CSV).

Every table is written as Markdown (for people and GitHub), LaTeX (``booktabs``, a complete
``table`` float to ``\\input``), CSV (raw numbers for machines: means, stds and counts in their
own columns) and HTML (what Snakemake's report shows inline). Renderers use fixed number formats
and never timestamps, so an unchanged input gives byte-identical files.

Display cells use a few Unicode signs (``±``, ``−``, ``Δ``, ``†``); the LaTeX renderer maps them
to LaTeX and escapes everything else (``_``, ``&``, ``%`` ...). A cell ``**x**`` is the best value
of its column, bold in every format (:func:`bold`).
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = [
    "BOLD",
    "RENDERERS",
    "Column",
    "Table",
    "bold",
    "csv_form",
    "display_rows",
    "flat_table",
    "latex_escape",
    "part_table",
    "parts_table",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
]


@dataclass(frozen=True)
class Column:
    """One column, defined once for both forms of a table: ``value`` gives a record's raw CSV
    value (``key`` is then the CSV column's name; ``None``: display only), ``fmt`` formats that
    value for display (default ``str``), or ``text`` gives the display cell from the record itself
    (when it is not a function of the one raw value); ``shown=False``: in the CSV only. A shown
    column with neither ``value`` nor ``text`` is blank (e.g. filled in by hand on summary rows).

    ``group`` is a shared super-header (e.g. an error type over "corrected" and "legacy").
    ``tex=False`` leaves it out of the LaTeX table (identifiers a reader of the paper does not
    need; the CSV keeps them); ``width`` wraps long text in LaTeX."""

    key: str
    header: str = ""
    align: str = "l"
    group: str = ""
    tex: bool = True
    width: str = ""  # LaTeX p{width} column, e.g. "5cm"
    value: Callable[[Any], Any] | None = None
    fmt: Callable[[Any], str] = str
    text: Callable[[Any], str] | None = None
    shown: bool = True

    def cell(self, record: Any) -> str:
        """The display text of ``record`` in this column."""
        if self.text is not None:
            return self.text(record)
        return "" if self.value is None else self.fmt(self.value(record))


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
    # rendered as a table of its own (in LaTeX its own float); ``rows`` is then empty and
    # ``columns`` are the header shown when there are no parts; the CSV holds the raw rows of all parts.
    parts: list["Table"] = field(default_factory=list)


def _shown(columns: Sequence[Column]) -> list[Column]:
    return [c for c in columns if c.shown]


def display_rows(columns: Sequence[Column], records: Sequence[Any]) -> list[dict[str, str]]:
    """The display cells of ``records`` in the shown ``columns``."""
    shown = _shown(columns)
    return [{c.key: c.cell(record) for c in shown} for record in records]


def csv_form(columns: Sequence[Column], records: Sequence[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV header and raw rows of ``records`` from the ``columns`` that have a value."""
    raw = [c for c in columns if c.value is not None]
    return [c.key for c in raw], [{c.key: c.value(record) for c in raw} for record in records]


def flat_table(
    name: str, title: str, caption: str, columns: Sequence[Column], records: Sequence[Any], **options: Any
) -> Table:
    """A table of one part: its display rows and CSV rows from the same ``columns``."""
    csv_columns, csv_rows = csv_form(columns, records)
    return Table(
        name, title, caption, _shown(columns), display_rows(columns, records), csv_columns, csv_rows, **options
    )


def part_table(
    name: str, title: str, caption: str, columns: Sequence[Column], rows: list[dict[str, str]], **options: Any
) -> Table:
    """One part of a file of several tables: display only (the file's CSV has every part's records)."""
    return Table(name, title, caption, _shown(columns), rows, [], [], **options)


def parts_table(
    name: str,
    title: str,
    caption: str,
    parts: list[Table],
    columns: Sequence[Column],
    records: Sequence[Any],
    header: Sequence[Column] | None = None,
    **options: Any,
) -> Table:
    """A file of several tables (``parts``); its CSV: ``records`` in ``columns``; ``header``
    (default: the shown ``columns``): the columns of the "No data" table when there are no parts."""
    csv_columns, csv_rows = csv_form(columns, records)
    header = _shown(columns) if header is None else list(header)
    return Table(name, title, caption, header, [], csv_columns, csv_rows, parts=parts, **options)


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


def bold(text: str) -> str:
    return f"{BOLD}{text}{BOLD}"


def _splitbold(text: str) -> tuple[bool, str]:
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
    bold, text = _splitbold(text)
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
        return _latex_parts(table)
    columns = [c for c in table.columns if c.tex]
    spec = "".join(f"p{{{c.width}}}" if c.width else c.align for c in columns)
    label = f"tab:dcl-{table.name.replace('_', '-')}"
    caption = latex_escape(f"{table.title}. {table.caption}")
    header = _latex_header(columns)
    body = [" & ".join(_latex_cell(row.get(c.key, ""), bool(c.width)) for c in columns) + r" \\" for row in table.rows]
    if not table.rows:
        body = [f"\\multicolumn{{{len(columns)}}}{{c}}{{\\emph{{No data: {latex_escape(table.empty)}}}}} \\\\"]
    notes = [latex_escape(note) for note in table.notes]
    lines = [
        "% Generated by `dcl report`; do not edit: re-run `dcl report` instead.",
        "% Needs \\usepackage{booktabs}" + (" and \\usepackage{longtable}." if table.long else "."),
    ]
    if table.long:
        lines += _latex_longtable(spec, caption, label, header, body, notes)
    else:
        lines += _latex_float("table*" if table.wide else "table", spec, caption, label, header, body, notes)
    return "\n".join(lines) + "\n"


def _latex_parts(table: Table) -> str:
    """One float per part, named ``{name}_1``, ``{name}_2`` ...; the file's notes under the last;
    the two header comment lines once."""
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


def _latex_header(columns: Sequence[Column]) -> list[str]:
    """The header rows: the column groups (``\\multicolumn`` over ``\\cmidrule``s) where there are
    any, then the column headers."""
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
    return header


def _latex_longtable(
    spec: str, caption: str, label: str, header: list[str], body: list[str], notes: list[str]
) -> list[str]:
    """A ``longtable`` (may break across pages; its header repeats on each), notes below it."""
    return [
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


def _latex_float(
    environment: str, spec: str, caption: str, label: str, header: list[str], body: list[str], notes: list[str]
) -> list[str]:
    """A ``table``/``table*`` float holding a ``tabular``, notes below it, ragged right."""
    lines = [
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
    return lines


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
    bold, text = _splitbold(text)
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


# Each format of dcl.report.outputs.TABLE_FORMATS and its renderer.
RENDERERS: dict[str, Callable[[Table], str]] = {"md": to_markdown, "tex": to_latex, "csv": to_csv, "html": to_html}
