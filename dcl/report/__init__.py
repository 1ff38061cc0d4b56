"""``dcl report``: the paper's tables and figures, regenerated from the runs.

Reads ``RESULTS_DIR/experiments.json`` (the runs that should exist), every run folder
``RESULTS_DIR/runs/{experiment}/seed{seed}/`` (``run.json``, ``metrics.json``, ``eval.json``,
``errors.json``, ``errors_legacy.json``) and ``results/published.yaml``, and writes:

- ``RESULTS_DIR/tables/{main_results,dcl_vs_baseline,error_analysis,ablations,reproduction,run_inventory}``
  ``.{md,tex,csv,html}``;
- ``RESULTS_DIR/figures/{error_breakdown,ablations,training_curves,reproduced_vs_published}.{png,pdf}``;
- ``RESULTS_DIR/README.md``, the reproduction summary;
- ``RESULTS_DIR/report.tex`` and, where pdflatex is installed, ``RESULTS_DIR/report.pdf``: every
  table and figure with its caption, the run summary and the verdicts in one document.

All outputs are always written (a figure without data is a labelled "No data" note), atomically,
and byte-identical when the inputs did not change. A broken run never stops the report: it is
listed in the inventory with its status and reason. No torch or detectron2 import.

Modules, one job each, imported one way (no module imports this ``__init__`` back):
:mod:`~dcl.report.outputs` (the output names: plain data), :mod:`~dcl.report.published` (the
published numbers; runs are read by :mod:`dcl.runs`), :mod:`~dcl.report.analysis` (every
statistic), :mod:`~dcl.report.labels` (display labels and number formats), :mod:`~dcl.report.table`
(the table model and its four renderers), :mod:`~dcl.report.tables` (the six builders),
:mod:`~dcl.report.figures`, :mod:`~dcl.report.summary` (README.md), :mod:`~dcl.report.document`
(report.tex, report.pdf).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dcl import layout
from dcl.io import InputError, atomic_write_text
from dcl.report.outputs import FIGURE_FORMATS, FIGURE_NAMES, TABLE_FORMATS, TABLE_NAMES
from dcl.report.published import load_published
from dcl.runs import (
    RunResult,
    add_run_arguments,
    load_run,
    read_experiments,
    status_totals,
)

if TYPE_CHECKING:
    from dcl.report import analysis
    from dcl.report.table import Table

# The output names are re-exported for the Snakefile and the tests (`from dcl.report import TABLE_NAMES`);
# pandas and matplotlib load only for a report (`dcl report --help` must start fast).
__all__ = [
    "FIGURE_FORMATS",
    "FIGURE_NAMES",
    "TABLE_FORMATS",
    "TABLE_NAMES",
    "ReportResult",
    "add_arguments",
    "build_report",
    "default_published_path",
    "run",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and found."""

    written: list[Path]
    runs: list[RunResult]
    figure_reasons: dict[str, str]  # figure -> "" or why it shows no data
    reproduction: list[analysis.Reproduction]
    pdf: Path | None = None  # None: pdflatex is not installed


def default_published_path() -> Path:
    """``results/published.yaml`` in the working directory, else in this package's repository."""
    candidates = [Path("results/published.yaml"), _REPO_ROOT / "results" / "published.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        "published numbers not found (looked for "
        + " and ".join(str(c) for c in candidates)
        + "): run from the repository root or pass --published PATH"
    )


def _experiments_file(results_dir: Path, experiments_path: str | os.PathLike | None) -> Path:
    """``experiments_path``, default ``results_dir/experiments.json``; an error when it is not there."""
    path = Path(experiments_path) if experiments_path else results_dir / layout.EXPERIMENTS
    if not path.is_file():
        raise InputError(
            f"experiments file not found: {path} (it lists the expected runs; "
            "`dcl plan` writes it, or pass --experiments PATH)"
        )
    return path


def _write_tables(folder: Path, built: Sequence[Table]) -> list[Path]:
    """Each table in each format, ``folder/{name}.{format}``, in :data:`TABLE_FORMATS` order."""
    from dcl.report.table import RENDERERS

    written = []
    for table in built:
        for extension in TABLE_FORMATS:
            path = folder / f"{table.name}.{extension}"
            atomic_write_text(path, RENDERERS[extension](table))
            written.append(path)
    return written


def build_report(
    results_dir: str | os.PathLike,
    experiments_path: str | os.PathLike | None = None,
    published_path: str | os.PathLike | None = None,
) -> ReportResult:
    """Read everything, write every table, figure and the README.

    Args:
        results_dir: ``results/{preset}``; run folders are relative to it.
        experiments_path: default ``results_dir/experiments.json``.
        published_path: default :func:`default_published_path`.
    Returns:
        :class:`ReportResult`.
    Raises:
        InputError: missing/invalid experiments.json or published.yaml (run files never raise).
    """
    from dcl.report import analysis, document, figures, summary, tables

    results_dir = Path(results_dir)
    experiments_path = _experiments_file(results_dir, experiments_path)
    experiments_file = read_experiments(experiments_path)  # read once
    preset, expected = experiments_file.preset, experiments_file.runs
    published = load_published(published_path if published_path else default_published_path())

    runs = [load_run(results_dir, run) for run in expected]
    experiments = analysis.experiment_stats(runs)
    comparisons = analysis.comparisons(experiments)
    reproduction = analysis.reproduction(published, experiments)
    built = [
        tables.main_table(experiments, comparisons, published),
        tables.comparison_table(comparisons),
        tables.error_table(experiments),
        tables.ablation_table(experiments),
        tables.reproduction_table(reproduction),
        tables.inventory_table(runs),
    ]
    written = _write_tables(results_dir / "tables", built)
    figure_reasons = figures.write_figures(results_dir / "figures", experiments, reproduction)
    written += [results_dir / "figures" / f"{name}.{ext}" for name in FIGURE_NAMES for ext in FIGURE_FORMATS]
    readme_path = results_dir / "README.md"
    atomic_write_text(
        readme_path,
        summary.readme(
            preset,
            runs,
            reproduction,
            comparisons,
            built,
            figure_reasons,
            occlusion=experiments_file.occlusion_subset,
        ),
    )
    written.append(readme_path)
    tex = document.latex_document(preset, runs, [row.verdict for row in reproduction], built, figure_reasons)
    atomic_write_text(results_dir / document.TEX_NAME, tex)
    written.append(results_dir / document.TEX_NAME)
    pdf = document.compile_pdf(results_dir)
    if pdf is not None:
        written.append(pdf)
    return ReportResult(written=written, runs=runs, figure_reasons=figure_reasons, reproduction=reproduction, pdf=pdf)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        "results/{preset}: holds experiments.json and runs/; tables/, figures/ and README.md are written here",
    )
    parser.add_argument(
        "--published",
        metavar="PATH",
        type=Path,
        default=None,
        help="published numbers (default: results/published.yaml in the working directory or the repository)",
    )
    from dcl import tracking

    tracking.add_arguments(parser, report=True)


def run(args: argparse.Namespace) -> int:
    from dcl import tracking

    tracking_options = tracking.options_from_args(args)
    if tracking_options is not None:
        tracking.check_available(tracking_options.backend)
    result = build_report(args.results_dir, args.experiments, args.published)
    if tracking_options is not None:
        run_id = tracking.log_report(tracking_options, result.written, args.results_dir, args.tracking_dir)
        print(f"{tracking_options.backend} tracking: the report's {len(result.written)} files are in run {run_id}")
    print(f"dcl report: {len(result.runs)} runs: " + status_totals(result.runs))
    for run_result in result.runs:
        spec = run_result.expected
        if run_result.status not in ("finished", "missing"):
            print(f"  {spec.experiment} seed {spec.seed}: {run_result.status}: {run_result.reason}", file=sys.stderr)
        elif run_result.warnings:
            print(f"  {spec.experiment} seed {spec.seed}: warning: {'; '.join(run_result.warnings)}", file=sys.stderr)
    verdicts: dict[str, int] = {}
    for row in result.reproduction:
        verdicts[row.verdict] = verdicts.get(row.verdict, 0) + 1
    if verdicts:
        print("published numbers: " + ", ".join(f"{n} {v}" for v, n in verdicts.items()))
    for name, reason in result.figure_reasons.items():
        if reason:
            print(f"figure {name}: no data ({reason}); wrote a labelled placeholder")
    if result.pdf is None:
        from dcl.report.document import install_hint

        print(f"note: {install_hint()}", file=sys.stderr)
    print(
        f"wrote {len(result.written)} files under {args.results_dir} (summary: {args.results_dir / 'README.md'}"
        + (f"; everything in one PDF: {result.pdf}" if result.pdf else "")
        + ")"
    )
    return 0
