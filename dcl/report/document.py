"""One PDF of the whole reproduction: ``RESULTS_DIR/report.pdf``, to send to co-authors.

:func:`latex_document` writes ``report.tex`` beside the tables and figures it includes: a title,
the summary (runs per status, the reproduction verdicts, figures without data), then one section
per table (its ``tables/<name>.tex``, caption included) and one per figure (``figures/<name>.pdf``
with the caption the Snakemake report shows, ``workflow/report/figure_<name>.rst``).
:func:`compile_pdf` runs ``pdflatex`` on it when it is installed (Debian's
``texlive-latex-base`` and ``texlive-latex-recommended``), reproducibly (``SOURCE_DATE_EPOCH``), and
moves the PDF into place atomically; without pdflatex it says how to get it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

from dcl.io import InputError, atomic_path
from dcl.report.outputs import FIGURE_NAMES
from dcl.runs import RunResult, status_totals
from dcl.report.table import Table, latex_escape

__all__ = ["PDF_NAME", "TEX_NAME", "compile_pdf", "figure_caption", "install_hint", "latex_document"]

TEX_NAME = "report.tex"
PDF_NAME = "report.pdf"
_CAPTIONS = Path(__file__).resolve().parents[2] / "workflow" / "report"
_PDFLATEX_TIMEOUT_S = 300
_INSTALL_HINT = "apt-get install texlive-latex-base texlive-latex-recommended (or any TeX Live with pdflatex)"


def figure_caption(name: str) -> tuple[str, str]:
    """(title, text) of a figure, from the Snakemake report's caption ``**Title.** text``."""
    path = _CAPTIONS / f"figure_{name}.rst"
    text = " ".join(path.read_text(encoding="utf-8").split()) if path.is_file() else ""
    text = re.sub(r"``(.+?)``", r"\1", text)  # reStructuredText's inline literals, as plain text
    match = re.match(r"\*\*(.+?)\.?\*\*\s*(.*)", text)
    return (match[1], match[2]) if match else (name.replace("_", " ").capitalize(), text)


def latex_document(
    preset: str,
    runs: Sequence[RunResult],
    verdicts: Sequence[str],
    tables: Sequence[Table],
    figure_reasons: dict[str, str],
) -> str:
    """The LaTeX source of the report, to be compiled in ``RESULTS_DIR`` (paths are relative)."""
    counts = Counter(verdicts)
    lines = [
        r"\documentclass[10pt]{article}",
        r"\usepackage[a4paper,textwidth=455pt,textheight=690pt]{geometry}",
        r"\usepackage{booktabs,longtable,graphicx,float}",
        r"\usepackage[hidelinks,bookmarks=true]{hyperref}",
        # The tables' own [tbp] floats (table* too: one column here) set in place, under their
        # section heading: a captioned block that does not float.
        r"\makeatletter",
        r"\newenvironment{dclinplace}{\par\medskip\noindent\begingroup\def\@captype{table}}"
        r"{\endgroup\par\medskip}",
        r"\renewenvironment{table}[1][]{\dclinplace}{\enddclinplace}",
        r"\renewenvironment{table*}[1][]{\dclinplace}{\enddclinplace}",
        r"\makeatother",
        r"\begin{document}",
        r"\title{Dense Contrastive Loss for Instance Segmentation:\\ reproduction report"
        f" (preset {latex_escape(preset)})}}",
        r"\author{dcl-pipeline (\texttt{dcl report})}",
        r"\date{}",
        r"\maketitle",
        r"\section*{Summary}",
        r"\addcontentsline{toc}{section}{Summary}",
        r"\begin{itemize}",
        f"\\item Runs: {latex_escape(status_totals(runs))} of {len(runs)} expected.",
        "\\item Published numbers: "
        + (latex_escape(", ".join(f"{n} {verdict}" for verdict, n in counts.items())) if counts else "none compared")
        + " (Table~\\ref{tab:dcl-reproduction}).",
    ]
    lines += [
        f"\\item Figure \\emph{{{latex_escape(figure_caption(name)[0])}}} has no data: {latex_escape(reason)}."
        for name, reason in figure_reasons.items()
        if reason
    ]
    lines += [r"\end{itemize}", r"\tableofcontents"]
    for table in tables:
        lines += [r"\clearpage", f"\\section{{{latex_escape(table.title)}}}", f"\\input{{tables/{table.name}.tex}}"]
    for name in FIGURE_NAMES:
        title, text = figure_caption(name)
        lines += [
            r"\clearpage",
            f"\\section{{{latex_escape(title)}}}",
            r"\begin{figure}[H]\centering",
            f"\\includegraphics[width=\\textwidth,height=0.75\\textheight,keepaspectratio]{{figures/{name}.pdf}}",
            f"\\caption{{\\textbf{{{latex_escape(title)}.}} {latex_escape(text)}}}\\label{{fig:dcl-{name.replace('_', '-')}}}",
            r"\end{figure}",
        ]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


def compile_pdf(results_dir: Path) -> Path | None:
    """``report.pdf`` from ``results_dir/report.tex`` (twice: contents and long tables settle);
    None when pdflatex is not installed. Raises InputError with pdflatex's first error."""
    engine = shutil.which("pdflatex")
    if engine is None:
        return None
    environment = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}  # the same bytes each time
    with tempfile.TemporaryDirectory(prefix="dcl-report-") as build:
        command = [engine, "-interaction=nonstopmode", "-halt-on-error", f"-output-directory={build}", TEX_NAME]
        for _ in range(2):
            done = subprocess.run(
                command,
                cwd=results_dir,
                env=environment,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_PDFLATEX_TIMEOUT_S,
            )
            if done.returncode != 0:
                error = next((line for line in done.stdout.splitlines() if line.startswith("!")), "see its log")
                raise InputError(f"pdflatex could not compile {results_dir / TEX_NAME}: {error}")
        with atomic_path(results_dir / PDF_NAME) as tmp:
            shutil.copyfile(Path(build) / "report.pdf", tmp)
    return results_dir / PDF_NAME


def install_hint() -> str:
    """What to do to get report.pdf where pdflatex is missing."""
    return f"pdflatex not found: report.tex is written, report.pdf needs pdflatex ({_INSTALL_HINT})"
