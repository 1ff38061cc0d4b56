"""The report's six tables: one builder each, with its caption and notes.

A builder formats results the analysis layer computed (:mod:`dcl.report.analysis`: seed
statistics, paired differences, verdicts, which runs an ablation point reuses and its reference
baseline) into a :class:`~dcl.report.table.Table` (:mod:`dcl.report.table`: the model and its
four renderers), with labels and numbers from :mod:`dcl.report.labels`; it computes no statistics.
Adding a table: one builder here, its name in :data:`dcl.report.outputs.TABLE_NAMES` and its call
in :func:`dcl.report.build_report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from dcl.report.analysis import (
    CONFIDENCE,
    PAIRED_TEST,
    Comparison,
    ExperimentStats,
    PairedDifference,
    Reproduction,
    Summary,
    MetricDifferences,
    detector_differences,
    error_types,
    is_base_point,
    reference_baseline,
    sort_key,
)
from dcl.report.labels import (
    DASH,
    MARK,
    dataset_name,
    format_ci,
    format_number,
    format_p,
    format_seeds,
    format_signed,
    format_summary,
    format_value,
    init_name,
    is_missing,
    method_name,
    metric_name,
    model_name,
    network_name,
    short_metric_name,
    spec_method_name,
    value_sort_key,
)
from dcl.report.published import PublishedEntry
from dcl.report.table import Column, Table, bold, display_rows, flat_table, part_table, parts_table
from dcl.runrecord import format_duration
from dcl.runs import FAMILY_STATS, RunResult, status_totals
from dcl.runrecord import gpu_hours

__all__ = [
    "ablation_table",
    "comparison_table",
    "error_table",
    "inventory_table",
    "main_table",
    "reproduction_table",
]

COCO_AP_MARK = "*"  # a Cityscapes number published as COCO-style AP, not the official metric
SEEDS_NOTE = f"{MARK} fewer seeds have results than configured; see the run inventory for why."


def _raw(key: str, value: Callable[[Any], Any]) -> Column:
    """A CSV-only column."""
    return Column(key, value=value, shown=False)


# ----------------------------------------------------------------------------- builders
_COCO_STATS = FAMILY_STATS["segm"]


def _published_for(
    published: Sequence[PublishedEntry], experiment: ExperimentStats, metric: str | None = None
) -> PublishedEntry | None:
    """The reproducible published number of ``experiment``'s model (the same
    :attr:`~dcl.runs.ExpectedRun.identity`) for ``metric`` (default: its headline)."""
    spec = experiment.spec
    for entry in published:
        if entry.reproducible and entry.identity == spec.identity and entry.metric == (metric or spec.metric):
            return entry
    return None


def _best_marks(rows: list[dict[str, str]], values: list[dict[str, float]], keys: Sequence[str]) -> None:
    """Bold the best (highest) mean of each column among ``rows`` (ties: all of them)."""
    for key in keys:
        column = [v.get(key, math.nan) for v in values]
        finite = [v for v in column if not is_missing(v)]
        if len(finite) < 2 or max(finite) - min(finite) < 1e-9:
            continue  # nothing to single out
        best = max(finite)
        for row, value in zip(rows, column):
            if not is_missing(value) and abs(value - best) < 1e-9 and row.get(key, DASH) != DASH:
                row[key] = bold(row[key])


def _or_dash(value: Any, fmt: Callable[[Any], str]) -> str:
    return DASH if value is None else fmt(value)


def _difference(difference: Callable[[Any], PairedDifference | None], name: str) -> Callable[[Any], Any]:
    """A record's ``difference(record).name`` (``None`` without a difference)."""

    def get(record: Any) -> Any:
        found = difference(record)
        return None if found is None else getattr(found, name)

    return get


def _difference_columns(
    difference: Callable[[Any], PairedDifference | None], group: str = "", pairs: str = "Pairs"
) -> list[Column]:
    """DCL − baseline: Δ, CI, p and pairs shown; mean, CI bounds, p and pairs in the CSV."""
    return [
        Column("delta_mean", "Δ", "r", group, value=_difference(difference, "mean"), fmt=format_signed),
        Column("ci", f"{CONFIDENCE:.0%} CI", "r", group, text=lambda r: _or_dash(difference(r), format_ci)),
        _raw("delta_ci_low", _difference(difference, "ci_low")),
        _raw("delta_ci_high", _difference(difference, "ci_high")),
        Column("delta_p", "p", "r", group, value=_difference(difference, "p_value"), fmt=format_p),
        Column("delta_pairs", pairs, "r", group, value=_difference(difference, "n")),
    ]


def _summary(experiment: ExperimentStats, metric: str) -> Summary:
    """Seed statistics of ``metric``; none when no seed has it."""
    return experiment.summary(metric) if metric in experiment.values else Summary(math.nan, math.nan, 0)


@dataclass(frozen=True)
class _MainRecord:
    """A main-results row: an experiment with its published number and headline comparison."""

    experiment: ExperimentStats
    published: PublishedEntry | None
    comparison: Comparison | None

    @property
    def spec(self) -> Any:
        return self.experiment.spec


def _main_metrics(members: Sequence[_MainRecord]) -> dict[str, str]:
    """The metric columns of a main-results part, in order, with their headers: the headline
    family's stats; on Cityscapes the COCO-style mask AP of the same predictions beside the official
    metric; the occlusion subset's mask AP where there is one."""
    family = members[0].spec.family
    headers = {f"{family}.{stat}": stat for stat in FAMILY_STATS[family]}
    if family == "cityscapes":
        headers["segm.AP"] = "COCO AP"
    if any(r.experiment.values.get("occ.segm.AP") for r in members):
        headers["occ.segm.AP"] = "OCC AP"
    return headers


def _main_columns(
    members: Sequence[_MainRecord], headers: dict[str, str], published: Sequence[PublishedEntry], named: bool
) -> list[Column]:
    """The display columns of a main-results part (``named``: rows say which detector they are)."""
    # Each detector's usual network is its trained experiments' (else its first row's); a row of
    # another backbone or schedule (a released R101-FPN 3x) says which, so no two rows read alike.
    usual: dict[str, tuple] = {}
    for record in sorted(members, key=lambda r: r.spec.group != "main"):
        usual.setdefault(record.spec.model, record.spec.network)

    def method(record: _MainRecord) -> str:
        spec = record.spec
        notes = ["released"] if spec.group == "released" else []
        if spec.network != usual[spec.model]:
            notes.append(network_name(spec.backbone, spec.schedule))
        return spec_method_name(spec, named) + (f" ({', '.join(notes)})" if notes else "")

    def stat_text(metric: str) -> Callable[[_MainRecord], str]:
        return lambda r: format_summary(_summary(r.experiment, metric)) if r.experiment.n_eval else DASH

    def paper(record: _MainRecord) -> str:
        if record.published is not None:
            return format_number(record.published.value, 1)
        # RefineMask's own Cityscapes baseline is published as COCO-style AP only.
        coco = _published_for(published, record.experiment, "segm.AP") if "segm.AP" in headers else None
        return DASH if coco is None else format_number(coco.value, 1) + COCO_AP_MARK

    return [
        Column("method", "Method", text=method),
        Column("seeds", "Seeds", "r", text=lambda r: format_seeds(r.experiment.n_eval, r.experiment.expected)),
        *[Column(m, header, "r", text=stat_text(m)) for m, header in headers.items()],
        Column("published", "Paper", "r", text=paper),
        Column("ci", f"{CONFIDENCE:.0%} CI", "r"),  # these two: of the DCL − baseline rows
        Column("p", "p", "r"),
    ]


def _difference_name(differences: MetricDifferences, models: Sequence[str], named: bool) -> str:
    """``DCL − baseline``; ``RefineMask + DCL − RefineMask`` beside another detector; ``Dice head −
    baseline`` for a method of one's own against the baseline it declares."""
    other, baseline = differences.other.spec, differences.baseline.spec
    if not differences.declared:
        if models == ["mask_rcnn"]:
            return "DCL − baseline"
        return f"{method_name('dcl', other.model, named)} − {method_name('baseline', other.model, named)}"
    plain = baseline.method == "baseline" and baseline.model == "mask_rcnn" and not named
    return f"{spec_method_name(other, named)} − {'baseline' if plain else spec_method_name(baseline, named)}"


def _difference_row(name: str, differences: MetricDifferences) -> dict[str, str]:
    """A difference row: the mean difference in every metric column; the CI, p and pairs of the headline."""
    row = {"method": name, "seeds": ""}
    for metric, difference in differences.differences.items():
        row[metric] = format_signed(difference.mean)
        if metric == differences.other.spec.metric:
            row.update(
                ci=format_ci(difference),
                p=format_p(difference.p_value),
                seeds=f"{difference.n} pair" + ("s" if difference.n != 1 else ""),
            )
    return row


def _main_part(dataset: str, init: str, members: Sequence[_MainRecord], published: Sequence[PublishedEntry]) -> Table:
    """One dataset/initialisation in the paper's layout: per detector (Mask R-CNN, then e.g.
    RefineMask), a row per model, then that detector's DCL − baseline."""
    headers = _main_metrics(members)
    stats = list(headers)
    models = list(dict.fromkeys(r.spec.model for r in members))  # members are in table order
    named = len(models) > 1  # say which detector "Baseline" is
    columns = _main_columns(members, headers, published, named)
    experiments = [r.experiment for r in members]
    rows, model_rows, means = [], [], []
    for model in models:
        own = [r for r in members if r.spec.model == model]
        own_rows = display_rows(columns, own)
        rows += own_rows
        model_rows += own_rows
        means += [{m: _summary(r.experiment, m).mean for m in stats} for r in own]
        for differences in detector_differences([r.experiment for r in own], experiments, stats):
            rows.append(_difference_row(_difference_name(differences, models, named), differences))
    _best_marks(model_rows, means, stats)  # over every detector's rows; the dicts are shared: bold shows in `rows`
    if all(row.get("published", DASH) == DASH for row in rows):
        columns = [c for c in columns if c.key != "published"]  # e.g. the toy data: nothing published
    headline = headers[members[0].spec.metric]
    what = (
        "Official Cityscapes instance-level AP and AP50 (cityscapesscripts), COCO-style mask AP beside"
        if members[0].spec.family == "cityscapes"
        else "COCO mask AP"
    )
    return part_table(
        "main",
        f"{dataset_name(dataset)}, {init_name(init)} initialisation",
        f"{what}; mean ± std over seeds; best in bold; DCL − baseline with the {CONFIDENCE:.0%} CI "
        f"and p-value of {headline}.",
        columns,
        rows,
        wide=len(stats) > 4,
    )


def _spec_fields(*fields: str) -> list[Column]:
    """CSV-only columns of a record's ``spec`` fields (``dataset``, ``init`` ...), as in experiments.json."""
    return [_raw(name, lambda r, name=name: getattr(r.spec, name)) for name in fields]


def _main_csv_columns() -> list[Column]:
    """The main table's CSV columns (one row per experiment); shown: the header of the "No data"
    table (the display is the parts, one per dataset and init)."""

    def stat_value(stat: str, part: str) -> Callable[[_MainRecord], Any]:
        def get(record: _MainRecord) -> Any:
            family = record.spec.family
            if stat not in FAMILY_STATS[family]:
                return None
            return getattr(record.experiment.summary(f"{family}.{stat}"), part)

        return get

    def published_diff(record: _MainRecord) -> float | None:
        if record.published is None:
            return None
        return record.experiment.summary(record.spec.metric).mean - record.published.value

    columns = [
        Column("dataset", "Dataset", value=lambda r: r.spec.dataset),
        Column("init", "Init", value=lambda r: r.spec.init),
        Column("method", "Method", value=lambda r: r.spec.method),
        *_spec_fields("model", "backbone", "schedule", "group", "kind"),
        Column("experiment", "Experiment", tex=False, value=lambda r: r.spec.experiment),
        Column("metric", "AP type", tex=False, value=lambda r: r.spec.metric),
        Column("seeds", "Seeds", "r"),
        _raw("seeds_with_results", lambda r: r.experiment.n_eval),
        _raw("seeds_expected", lambda r: r.experiment.expected),
    ]
    for stat in _COCO_STATS:
        columns += [
            Column(stat, stat, "r"),
            *[_raw(f"{stat}_{part}", stat_value(stat, part)) for part in ("mean", "std")],
        ]
    return columns + [
        Column("published", "AP", "r", "Published", value=lambda r: r.published.value if r.published else None),
        Column("published_diff", "Δ", "r", "Published", value=published_diff),
        *_difference_columns(lambda r: r.comparison.difference if r.comparison else None, "DCL − baseline", "pairs"),
    ]


def _main_notes(
    experiments: Sequence[ExperimentStats],
    records: Sequence[_MainRecord],
    parts: Sequence[Table],
    published: Sequence[PublishedEntry],
) -> list[str]:
    """The main table's notes: the ones that apply to what it shows."""
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
    if any(r.spec.baseline is not None for r in records):
        notes.append(
            "Methods of one's own (the workflow config's `methods`): a row with their label, and their "
            "paired difference against the experiment each declares as its baseline (the same statistics)."
        )
    if any(r.experiment.n_eval < r.experiment.expected for r in records):
        notes.insert(0, SEEDS_NOTE)
    return notes


def main_table(
    experiments: Sequence[ExperimentStats], comparisons: Sequence[Comparison], published: Sequence[PublishedEntry]
) -> Table:
    """Main results: per dataset/init/method, mean ± std over seeds of the headline family's
    stats, the published number and the difference, and DCL minus baseline (headline metric)."""
    headline = {(c.dcl.name, c.metric): c for c in comparisons}
    records = [
        _MainRecord(e, _published_for(published, e), headline.get((e.spec.experiment, e.spec.metric)))
        for e in experiments
        if e.spec.group != "ablation"
    ]
    groups: dict[tuple[str, str], list[_MainRecord]] = {}
    for record in records:
        groups.setdefault((record.spec.dataset, record.spec.init), []).append(record)
    parts = [_main_part(dataset, init, members, published) for (dataset, init), members in groups.items()]
    return parts_table(
        "main_results",
        "Main results",
        "Mask AP of the baselines (Mask R-CNN; RefineMask where configured) and DCL, one table per dataset "
        "and initialisation, over seeds, with the published numbers and the paired DCL − baseline difference "
        "of each detector.",
        parts,
        _main_csv_columns(),
        records,
        notes=_main_notes(experiments, records, parts, published),
        empty="no main or released experiments in experiments.json",
        wide=True,
    )


def _compared(comparison: Comparison) -> str:
    """``DCL − Baseline``, ``Dice head − Baseline``: which two experiments a row compares."""
    return f"{spec_method_name(comparison.dcl.spec)} − {spec_method_name(comparison.baseline.spec)}"


def _comparison_columns(comparisons: Sequence[Comparison]) -> list[Column]:
    """Each comparison's experiments, metric, both sides' seed statistics and the difference."""

    def summary(side: str) -> Callable[[Comparison], Summary]:
        return lambda c: getattr(c, side).summary(c.metric)

    def summary_columns(side: str) -> list[Column]:
        of = summary(side)
        return [
            Column(side, method_name(side), "r", text=lambda c: f"{format_summary(of(c))} (n={of(c).n})"),
            *[_raw(f"{side}_{stat}", lambda c, stat=stat: getattr(of(c), stat)) for stat in ("mean", "std", "n")],
        ]

    return [
        _raw("dataset", lambda c: c.dcl.spec.dataset),
        Column("init", "Init", value=lambda c: c.dcl.spec.init, fmt=init_name),
        Column("model", "Detector", value=lambda c: c.dcl.spec.model, fmt=model_name),
        Column("group", "Group", tex=False, value=lambda c: c.dcl.spec.group),
        *(
            [Column("compared", "Compared", text=_compared)]
            if any(c.dcl.spec.baseline is not None for c in comparisons)
            else []
        ),
        _raw("baseline_experiment", lambda c: c.baseline.name),
        _raw("dcl_experiment", lambda c: c.dcl.name),
        # short: the dataset is beside it, in the part's title
        Column("metric", "Metric", value=lambda c: c.metric, fmt=short_metric_name),
        *summary_columns("baseline"),
        *summary_columns("dcl"),
        *_difference_columns(lambda c: c.difference),
        _raw("paired_seeds", lambda c: " ".join(str(s) for s in c.difference.seeds)),
    ]


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
    """DCL minus baseline for every metric column, paired by seed; one table per dataset."""
    columns = _comparison_columns(comparisons)
    by_dataset: dict[str, list[Comparison]] = {}
    for comparison in comparisons:
        by_dataset.setdefault(comparison.dcl.spec.dataset, []).append(comparison)
    notes = [
        "Baseline, DCL: mean ± sample std over each experiment's seeds with results (n).",
        f"Δ: mean of DCL − baseline over seeds present in both (seeds paired by seed index); "
        f"{CONFIDENCE:.0%} CI: t distribution of the mean paired difference; p: {PAIRED_TEST}; "
        "n/a with fewer than 2 pairs, and p n/a when all paired differences are equal.",
    ]
    if any(c.dcl.spec.baseline is not None for c in comparisons):
        notes.append(
            "Compared: rows of a method of one's own (the workflow config's `methods`) hold it in the DCL "
            "columns and the experiment it declares as its baseline in the Baseline columns."
        )
    parts = [
        part_table(
            "dcl_vs_baseline",
            dataset_name(dataset),
            "DCL − baseline per initialisation, detector and AP.",
            columns,
            display_rows(columns, members),
            wide=True,
        )
        for dataset, members in by_dataset.items()
    ]
    return parts_table(
        "dcl_vs_baseline",
        "DCL versus baseline",
        "Paired difference DCL − baseline for every reported AP (one table per dataset), per "
        "initialisation, detector and group.",
        parts,
        columns,
        comparisons,
        header=[Column("init", "Init")],
        notes=notes,
        empty="no DCL experiment with a matching baseline (same dataset, init, detector and group) in experiments.json",
        wide=True,
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
    named = len({e.spec.model for e in members}) > 1  # say which detector "Baseline" is

    def label(experiment: ExperimentStats) -> str:
        spec = experiment.spec
        if spec.group == "ablation":
            parameter = spec.ablation.parameter.replace("_", " ").lower()
            return f"{spec_method_name(spec, named)}, {parameter} {format_value(spec.ablation.value)}"
        label = spec_method_name(spec, named) + f", {init_name(spec.init)}"
        return label + (" (released)" if spec.group == "released" else "")

    def ap(experiment: ExperimentStats) -> str:
        base = experiment.error_summary("baseline", legacy=True, occ=occ)  # the paper's (legacy GT) first
        if base.n == 0:
            base = experiment.error_summary("baseline", legacy=False, occ=occ)
        return format_number(base.mean)

    def gain(error_type: str, legacy: bool) -> Callable[[ExperimentStats], str]:
        return lambda e: format_number(e.error_summary(error_type, legacy, occ).mean)

    columns = [
        Column("model", "Model", text=label),
        Column(
            "seeds",
            "Seeds",
            "r",
            text=lambda e: format_seeds(min(e.n_errors(False, occ), e.n_errors(True, occ)), e.expected),
        ),
        Column("ap", "AP", "r", text=ap),
    ]
    for group, legacy in ((_LEGACY_GROUP, True), (_CORRECTED_GROUP, False)):
        columns += [Column(f"{t}/{group}", t, "r", group, text=gain(t, legacy)) for t in types]
    return part_table(
        "errors", title, _gt_note(members, occ), columns, display_rows(columns, members), wide=len(types) > 3
    )


def _error_csv_columns(types: Sequence[str]) -> list[Column]:
    """The error table's CSV: per experiment, the AP and each type's gain (mean, std) in both semantics."""

    def ap(part: str) -> Callable[[ExperimentStats], float]:
        def get(experiment: ExperimentStats) -> float:
            base = experiment.error_summary("baseline", legacy=False)  # ours (corrected) first
            if base.n == 0:
                base = experiment.error_summary("baseline", legacy=True)
            return getattr(base, part)

        return get

    def gain(error_type: str, legacy: bool, part: str) -> Callable[[ExperimentStats], float]:
        return lambda e: getattr(e.error_summary(error_type, legacy), part)

    return [
        *_spec_fields("dataset", "init", "method", "model", "group", "experiment"),
        _raw("seeds_expected", lambda e: e.expected),
        _raw("seeds_corrected", lambda e: e.n_errors(False)),
        _raw("seeds_legacy", lambda e: e.n_errors(True)),
        _raw("ap_mean", ap("mean")),
        _raw("ap_std", ap("std")),
        *[
            _raw(f"{t}_{semantics}_{part}", gain(t, legacy, part))
            for t in types
            for semantics, legacy in (("corrected", False), ("legacy", True))
            for part in ("mean", "std")
        ],
        _raw("gt_corrected", lambda e: " ".join(sorted(e.gt_files.get("errors", ())))),
        _raw("gt_legacy", lambda e: " ".join(sorted(e.gt_files.get("errors_legacy", ())))),
    ]


def error_table(experiments: Sequence[ExperimentStats]) -> Table:
    """AP gain from removing each error type, legacy and corrected semantics side by side, one
    table per dataset (and one on the occlusion subset where there is one)."""
    types = error_types(experiments)
    # Baselines, DCL and released models first (the paper's comparison), ablation models after.
    ordered = sorted(experiments, key=lambda e: (e.spec.group == "ablation", sort_key(e.spec)))
    incomplete = any(min(e.n_errors(False), e.n_errors(True)) < e.expected for e in ordered)
    by_dataset: dict[str, list[ExperimentStats]] = {}
    for experiment in ordered:
        # a base point repeats its base's runs
        if (experiment.n_errors(False) or experiment.n_errors(True)) and not is_base_point(experiment):
            by_dataset.setdefault(experiment.spec.dataset, []).append(experiment)
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
    return parts_table(
        "error_analysis",
        "Segmentation-error analysis",
        "AP gain from removing foreground false positives (fFP), background false positives (bFP) "
        "and false negatives (FN), per model; legacy and corrected semantics side by side.",
        parts if types else [],
        _error_csv_columns(types),
        ordered if types else [],
        header=[Column("model", "Model")],
        notes=notes,
        empty="no run has an errors.json or errors_legacy.json yet",
        wide=True,
    )


def _ablation_part(parameter: str, members: Sequence[ExperimentStats], experiments: Sequence[ExperimentStats]) -> Table:
    metric = members[0].spec.metric
    columns = [
        Column(
            "value",
            parameter.replace("_", " ").lower(),
            "r",
            text=lambda e: format_value(e.spec.ablation.value) + (" (base)" if is_base_point(e) else ""),
        ),
        Column("seeds", "Seeds", "r", text=lambda e: format_seeds(e.n_eval, e.expected)),
        Column(
            "ap",
            metric_name(metric).replace("COCO mask ", "mask "),
            "r",
            text=lambda e: format_summary(e.summary(metric)),
        ),
    ]
    rows = display_rows(columns, members)
    _best_marks(rows, [{"ap": e.summary(metric).mean} for e in members], ["ap"])
    bases = sorted({e.spec.ablation.base for e in members})
    baseline = reference_baseline(experiments, bases[0]) if len(bases) == 1 else None
    if baseline is not None:
        rows.append({**display_rows(columns[1:], [baseline])[0], "value": "no DCL (baseline)"})
    return part_table("ablation", parameter, f"around {', '.join(bases)}", columns, rows)


def ablation_table(experiments: Sequence[ExperimentStats]) -> Table:
    """Headline AP against each swept hyper-parameter."""
    ablations = sorted(
        (e for e in experiments if e.spec.ablation is not None),
        key=lambda e: (e.spec.ablation.parameter, e.spec.ablation.base, value_sort_key(e.spec.ablation.value), e.name),
    )

    def written(experiment: ExperimentStats) -> str:
        # as written in experiments.json (2.0 stays 2.0, False is false)
        value = experiment.spec.ablation.value
        return value if isinstance(value, str) else json.dumps(value)

    def ablation(field_name: str) -> Column:
        return _raw(field_name, lambda e: getattr(e.spec.ablation, field_name))

    columns = [
        ablation("parameter"),
        ablation("key"),
        _raw("value", written),
        ablation("base"),
        *_spec_fields("experiment", "dataset", "metric"),
        _raw("seeds_with_results", lambda e: e.n_eval),
        _raw("seeds_expected", lambda e: e.expected),
        _raw("mean", lambda e: e.summary(e.spec.metric).mean),
        _raw("std", lambda e: e.summary(e.spec.metric).std),
    ]
    by_parameter: dict[str, list[ExperimentStats]] = {}
    for experiment in ablations:
        by_parameter.setdefault(experiment.spec.ablation.parameter, []).append(experiment)
    parts = [_ablation_part(parameter, members, experiments) for parameter, members in by_parameter.items()]
    notes = [
        "AP in %: mean ± sample standard deviation (ddof=1) over the seeds with results; (base): the base "
        "experiment's own value; no DCL: the baseline of the same dataset, initialisation and detector; "
        "best in bold."
    ]
    if any(e.n_eval < e.expected for e in ablations):
        notes.insert(0, SEEDS_NOTE)
    return parts_table(
        "ablations",
        "Ablations",
        "Headline AP of DCL for each value of each swept hyper-parameter "
        "(MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.*), one sweep at a time around its base experiment.",
        parts,
        columns,
        ablations,
        # the "No data" table: the columns of a flat listing (the CSV's order differs)
        header=[
            Column("parameter", "Parameter"),
            Column("value", "Value", "r"),
            Column("experiment", "Experiment"),
            Column("base", "Base experiment"),
            Column("metric", "Metric"),
            Column("seeds", "Seeds", "r"),
            Column("ap", "AP", "r"),
        ],
        notes=notes,
        empty="no ablation runs in experiments.json",
    )


def _info(result: RunResult) -> dict[str, Any]:
    return result.info or {}


def _gpus(result: RunResult) -> dict[str, Any]:
    return _info(result).get("gpus") or {}


def _iterations(result: RunResult) -> str:
    iteration, max_iter = _info(result).get("iteration"), _info(result).get("max_iter")
    return DASH if iteration is None else f"{iteration}" + ("" if max_iter is None else f"/{max_iter}")


def _gpu_text(result: RunResult) -> str:
    count, gpu_type = _gpus(result).get("count"), _gpus(result).get("type")
    if count == 0:
        return "CPU"
    if count is None and gpu_type is None:
        return DASH
    return " × ".join(str(part) for part in (count, gpu_type) if part is not None)


def _gpu_hours(result: RunResult) -> float | None:
    hours = gpu_hours(_info(result))
    return None if hours is None else round(hours, 3)


def inventory_table(results: Sequence[RunResult]) -> Table:
    """Every expected run with its status, reason, progress, wall time and GPUs."""

    def expected(field_name: str, header: str = "", **options: Any) -> Column:
        return Column(
            field_name, header, value=lambda r: getattr(r.expected, field_name), shown=bool(header), **options
        )

    columns = [
        expected("experiment", "Experiment", width="2.6cm"),
        expected("seed", "Seed", align="r"),
        expected("kind", "Kind"),
        *[expected(name) for name in ("group", "dataset", "init", "method", "run_dir")],
        Column("status", "Status", value=lambda r: r.status),
        Column("reason", "Reason", width="2.4cm", value=lambda r: r.reason),
        Column("iterations", "Iterations", "r", text=_iterations),
        _raw("iteration", lambda r: _info(r).get("iteration")),
        _raw("max_iter", lambda r: _info(r).get("max_iter")),
        Column(
            "wall_time_s",
            "Wall time",
            "r",
            value=lambda r: _info(r).get("wall_time_s"),
            fmt=lambda s: format_duration(s, DASH),
        ),
        Column("gpus", "GPUs", text=_gpu_text),
        _raw("gpu_type", lambda r: _gpus(r).get("type")),
        _raw("gpu_count", lambda r: _gpus(r).get("count")),
        Column("gpu_hours", "GPU-h", "r", value=_gpu_hours, fmt=lambda hours: format_number(hours, 1)),
    ]
    notes = [
        "Status: finished (all result files valid); running (run.json says so); incomplete (interrupted, "
        "stopped early, or a step's file not written yet); failed (training failed, or a file is "
        "unreadable, truncated or mistyped: the reason names it); missing (no results yet).",
        "Totals: " + status_totals(results) + f" of {len(results)} expected runs.",
        "Wall time: h:mm:ss summed over attempts (run.json); GPU-h: wall time x GPUs, "
        f"{format_number(sum(_gpu_hours(r) or 0 for r in results), 1)} GPU-hours in all.",
    ]
    return flat_table(
        "run_inventory",
        "Run inventory",
        "Every run the experiment matrix expects, with its status and, when not finished, why.",
        columns,
        sorted(results, key=lambda r: (sort_key(r.expected), r.expected.seed)),
        notes=notes,
        empty="experiments.json lists no runs",
        long=True,
    )


_REPRODUCTION_NOTES = [
    "Trained experiments: reproduced when all configured seeds have results, there are at least 2, "
    "and |mean − published| ≤ 2 × sample std over seeds (the paper reports a single run: is it a "
    "plausible draw from our seed distribution?).",
    "Released checkpoints (evaluation only): reproduced when the value rounds to the published one "
    "at its precision (|value − published| ≤ 0.05 for a number given to 0.1).",
    "Sources of the published numbers: results/published.yaml.",
]


def reproduction_table(rows_in: Sequence[Reproduction]) -> Table:
    """Each published number with what this reproduction measured and the verdict."""

    def entry(field_name: str, header: str = "", **options: Any) -> Column:
        return Column(field_name, header, value=lambda r: getattr(r.entry, field_name), shown=bool(header), **options)

    def of_experiment(get: Callable[[ExperimentStats], Any]) -> Callable[[Reproduction], Any]:
        return lambda r: None if r.experiment is None else get(r.experiment)

    columns = [
        entry("detector", "Detector", width="1.5cm"),
        entry("dataset", "Dataset", fmt=dataset_name),
        entry("init", "Init", fmt=init_name),
        entry("method", "Method", fmt=method_name),
        entry("backbone"),
        entry("schedule"),
        entry("metric", "Metric", fmt=short_metric_name),
        Column("published", "Published", "r", value=lambda r: r.entry.value, fmt=lambda v: format_number(v, 1)),
        entry("source"),
        Column(
            "experiment",
            "Experiment",
            tex=False,
            value=of_experiment(lambda e: e.name),
            fmt=lambda v: DASH if v is None else v,
        ),
        _raw("kind", of_experiment(lambda e: e.spec.kind)),
        Column(
            "seeds",
            "Seeds",
            "r",
            tex=False,
            text=lambda r: DASH if r.experiment is None else format_seeds(r.summary.n, r.experiment.expected),
        ),
        _raw("seeds_with_results", lambda r: r.summary.n),
        _raw("seeds_expected", of_experiment(lambda e: e.expected)),
        Column("reproduced", "Reproduced", "r", text=lambda r: format_summary(r.summary)),
        _raw("mean", lambda r: r.summary.mean),
        _raw("std", lambda r: r.summary.std),
        Column("difference", "Δ", "r", value=lambda r: r.difference if r.summary.n else None, fmt=format_signed),
        Column("verdict", "Verdict", width="1.5cm", value=lambda r: r.verdict),
        Column("reason", "Why", width="2.2cm", value=lambda r: r.reason),
    ]
    return flat_table(
        "reproduction",
        "Published numbers and their reproduction",
        "Every published number next to this reproduction's mean ± std over seeds and the verdict.",
        columns,
        rows_in,
        notes=list(_REPRODUCTION_NOTES),
        empty="results/published.yaml lists no numbers",
        wide=True,
    )
