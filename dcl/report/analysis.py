"""Aggregation and statistics behind every table and figure (no formatting, no plotting).

- :func:`summarize`: mean, sample standard deviation (ddof=1) and count of seed values.
- :func:`paired_difference`: DCL minus baseline, seeds paired by seed index, with the paired
  t-test (``scipy.stats.ttest_rel``) and the t-distribution 95% confidence interval of the mean
  paired difference.
- :class:`ExperimentStats` / :func:`experiment_stats`: one experiment's seeds folded together.
- :func:`comparisons`, :func:`reproduction`: DCL-vs-baseline pairs and published-number verdicts.
- :func:`detector_differences`: the main table's DCL − baseline rows (every metric it shows).
- :func:`training_curve_stats`: each main experiment's logged losses, learning rate and periodic AP,
  mean, min and max over seeds at each iteration.
- :func:`is_base_point`, :func:`reference_baseline`: an ablation point that reuses its base's runs,
  and the baseline without DCL that an ablation is read against.

The verdict rule (also printed in the generated README): a trained experiment reproduces a
published number when all its configured seeds finished, there are at least two, and
``|mean - published| <= 2 * std`` (sample std over seeds): the paper reports one training run,
so the question is whether that number is a plausible draw from our seed distribution. A released
checkpoint (evaluation only, no training noise) reproduces it when the value rounds to the
published one at its precision (``|value - published| <= 0.05`` for a number given to 0.1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from dcl import layout, names
from dcl.report.published import PublishedEntry
from dcl.runs import EVAL_KEYS, FAMILY_STATS, TRAINING_KEYS, ExpectedRun, RunResult

__all__ = [
    "CONFIDENCE",
    "PAIRED_TEST",
    "Comparison",
    "ExperimentStats",
    "MetricDifferences",
    "PairedDifference",
    "TrainingCurves",
    "VALIDATION",
    "Reproduction",
    "Summary",
    "comparisons",
    "describe_identity",
    "detector_differences",
    "error_types",
    "experiment_stats",
    "is_base_point",
    "paired_difference",
    "reference_baseline",
    "reproduction",
    "sort_key",
    "summarize",
    "training_curve_stats",
]

CONFIDENCE = 0.95
PAIRED_TEST = "two-sided paired t-test over seeds paired by seed index (scipy.stats.ttest_rel)"
SPREAD_FACTOR = 2.0  # |mean - published| <= 2 std counts as reproduced


def _rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    """Display order (dcl.names, the paper's): the known names first, then anything else alphabetically."""
    order = tuple(order)
    return (order.index(value), "") if value in order else (len(order), value)


def sort_key(run: ExpectedRun) -> tuple:
    """Rows in paper order: dataset, init, detector (Mask R-CNN first, then its released
    checkpoints), group, method, backbone (by depth), schedule, experiment name."""
    return (
        _rank(run.dataset, names.DATASETS),
        _rank(run.init, names.INITS),
        run.model != "mask_rcnn",
        run.model,
        _rank(run.group, names.GROUPS),
        _rank(run.method, names.METHODS),
        _natural(run.backbone),
        run.schedule or "",
        run.experiment,
    )


def _natural(text: str) -> tuple:
    """R50-FPN before R101-FPN: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", text))


def describe_identity(identity: tuple) -> str:
    """``coco/imagenet/baseline/mask_rcnn/R50-FPN/3x`` for messages (no schedule: left out)."""
    return "/".join(str(part) for part in identity if part is not None)


@dataclass(frozen=True)
class Summary:
    """Seed statistics of one number: ``std`` is NaN for fewer than two values, ``mean`` for none."""

    mean: float
    std: float
    n: int


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample standard deviation (ddof=1) and count.

    Args:
        values: one number per seed.
    Returns:
        :class:`Summary`; NaN where undefined (no values, or std of a single value).
    """
    array = np.asarray(list(values), dtype=float)
    n = int(array.size)
    mean = float(array.mean()) if n else math.nan
    std = float(array.std(ddof=1)) if n >= 2 else math.nan
    return Summary(mean=mean, std=std, n=n)


@dataclass(frozen=True)
class PairedDifference:
    """DCL minus baseline over paired seeds; CI and p-value are NaN with fewer than two pairs
    (and the p-value also when all paired differences are equal: the t statistic is undefined)."""

    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_difference(baseline: dict[int, float], dcl: dict[int, float]) -> PairedDifference:
    """Pair seeds present in both, then ``dcl - baseline``.

    Args:
        baseline, dcl: seed -> value.
    Returns:
        :class:`PairedDifference`: mean difference, 95% CI ``mean +- t_{0.975, n-1} * sd / sqrt(n)``,
        and the paired t-test's two-sided p-value.
    """
    seeds = tuple(sorted(set(baseline) & set(dcl)))
    after = np.array([dcl[s] for s in seeds], dtype=float)
    before = np.array([baseline[s] for s in seeds], dtype=float)
    differences = after - before
    n = len(seeds)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, seeds)
    mean = float(differences.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, seeds)
    sd = float(differences.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        # Identical differences: zero-width interval, and no t statistic to test.
        return PairedDifference(mean, mean, mean, math.nan, seeds)
    test = scipy_stats.ttest_rel(after, before)
    half_width = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half_width, mean + half_width, float(test.pvalue), seeds)


@dataclass
class ExperimentStats:
    """All seeds of one experiment folded together.

    Attributes:
        runs: every expected run of the experiment (with status), sorted by seed.
        values: metric ("segm.AP", ...) -> seed -> value, from runs with a usable eval.json.
        errors, errors_legacy: error type -> seed -> AP gain; plus ``"baseline"`` -> seed -> AP.
    """

    runs: list[RunResult]
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    errors: dict[str, dict[int, float]] = field(default_factory=dict)
    errors_legacy: dict[str, dict[int, float]] = field(default_factory=dict)
    # The same on the occlusion subset (COCO-OCC); its eval metrics are in ``values`` as "occ.segm.AP".
    errors_occ: dict[str, dict[int, float]] = field(default_factory=dict)
    errors_legacy_occ: dict[str, dict[int, float]] = field(default_factory=dict)
    gt_files: dict[str, set[str]] = field(default_factory=dict)  # analysis -> GT base names used

    @property
    def spec(self) -> ExpectedRun:
        return self.runs[0].expected

    @property
    def name(self) -> str:
        return self.spec.experiment

    @property
    def expected(self) -> int:
        return len(self.runs)

    @property
    def n_eval(self) -> int:
        return sum(run.eval is not None for run in self.runs)

    def _analyses(self, legacy: bool, occ: bool) -> dict[str, dict[int, float]]:
        if occ:
            return self.errors_legacy_occ if legacy else self.errors_occ
        return self.errors_legacy if legacy else self.errors

    def n_errors(self, legacy: bool, occ: bool = False) -> int:
        name = ("errors_legacy" if legacy else "errors") + ("_occ" if occ else "")
        return sum(getattr(run, name) is not None for run in self.runs)

    @property
    def stats(self) -> tuple[str, ...]:
        """Metrics the tables show for this experiment: its headline family's stats."""
        return tuple(f"{self.spec.family}.{stat}" for stat in FAMILY_STATS[self.spec.family])

    def summary(self, metric: str) -> Summary:
        """Seed statistics of ``metric``; NaN unless every usable run has a value (a null stat,
        COCO's "no GT in this area range", must not be averaged over a subset of seeds)."""
        by_seed = self.values.get(metric, {})
        if len(by_seed) != self.n_eval:
            return Summary(math.nan, math.nan, 0)
        return summarize(by_seed[s] for s in sorted(by_seed))

    def error_summary(self, error_type: str, legacy: bool, occ: bool = False) -> Summary:
        """AP gain of ``error_type`` (or ``"baseline"`` AP) over the seeds whose analysis has it;
        NaN when some analysed seed lacks that type. ``occ``: on the occlusion subset."""
        by_seed = self._analyses(legacy, occ).get(error_type, {})
        if len(by_seed) != self.n_errors(legacy, occ) or not by_seed:
            return Summary(math.nan, math.nan, 0)
        return summarize(by_seed[s] for s in sorted(by_seed))


def experiment_stats(results: Iterable[RunResult]) -> list[ExperimentStats]:
    """Group runs by experiment, in paper order (:func:`sort_key`)."""
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.expected.experiment, []).append(result)
    experiments = []
    for runs in grouped.values():
        runs.sort(key=lambda r: r.expected.seed)
        stats = ExperimentStats(runs=runs)
        for run in runs:
            seed = run.expected.seed
            for metric, value in (run.eval or {}).items():
                if value is not None:
                    stats.values.setdefault(metric, {})[seed] = value
            for metric, value in (run.eval_occ or {}).items():
                if value is not None:
                    stats.values.setdefault(f"occ.{metric}", {})[seed] = value
            for name, target, analysis in (
                ("errors", stats.errors, run.errors),
                ("errors_legacy", stats.errors_legacy, run.errors_legacy),
                ("errors_occ", stats.errors_occ, run.errors_occ),
                ("errors_legacy_occ", stats.errors_legacy_occ, run.errors_legacy_occ),
            ):
                if analysis is None:
                    continue
                if analysis.gt:
                    stats.gt_files.setdefault(name, set()).add(analysis.gt)
                target.setdefault("baseline", {})[seed] = analysis.baseline_ap
                for error_type, gain in analysis.gains.items():
                    target.setdefault(error_type, {})[seed] = gain
        experiments.append(stats)
    experiments.sort(key=lambda e: sort_key(e.spec))
    return experiments


def error_types(experiments: Iterable[ExperimentStats]) -> list[str]:
    """Every error type analysed anywhere: single types first (fFP, bFP, FN), then combinations
    by size (``fFP&bFP`` ...), unknown names alphabetically within their size."""
    found = {t for e in experiments for d in (e.errors, e.errors_legacy) for t in d if t != "baseline"}

    def key(error_type: str) -> tuple:
        parts = error_type.split("&")
        return (len(parts), [_rank(p, names.ERROR_KINDS) for p in parts])

    return sorted(found, key=key)


@dataclass(frozen=True)
class Comparison:
    """DCL experiment vs the baseline of the same dataset, init, group and model (detector,
    backbone, schedule), for one metric; or a method of one's own (in ``dcl``) vs the experiment
    it declares as its ``baseline``."""

    baseline: ExperimentStats
    dcl: ExperimentStats
    metric: str
    difference: PairedDifference


def comparisons(experiments: Sequence[ExperimentStats]) -> list[Comparison]:
    """DCL minus baseline for every DCL experiment of the main and released groups that has
    exactly one baseline experiment with the same dataset, init, group, model (detector, backbone,
    schedule) and metric; and each method of one's own (main, released) minus its declared baseline.

    Returns:
        One :class:`Comparison` per (DCL experiment, metric of its family), in table order.
    """
    out = []
    for dcl in experiments:
        spec = dcl.spec
        if spec.group == "ablation":
            continue
        if spec.baseline is not None:  # a method of one's own: against the experiment it names
            baselines = [e for e in experiments if e.name == spec.baseline and e.spec.metric == spec.metric]
        elif spec.method != "dcl":
            continue
        else:
            baselines = [
                e
                for e in experiments
                if e.spec.method == "baseline"
                and e.spec.group == spec.group
                and e.spec.dataset == spec.dataset
                and e.spec.init == spec.init
                and e.spec.metric == spec.metric
                and e.spec.network == spec.network
            ]
        if len(baselines) != 1:
            continue
        for metric in dcl.stats:
            base_values = baselines[0].values.get(metric, {})
            dcl_values = dcl.values.get(metric, {})
            out.append(Comparison(baselines[0], dcl, metric, paired_difference(base_values, dcl_values)))
    return out


@dataclass(frozen=True)
class MetricDifferences:
    """``other`` minus ``baseline`` on each of several metrics, seeds paired by seed index.
    ``declared``: ``other`` is a method of one's own against the baseline it declares."""

    baseline: ExperimentStats
    other: ExperimentStats
    differences: dict[str, PairedDifference]
    declared: bool = False


def _metric_differences(
    baseline: ExperimentStats, other: ExperimentStats, metrics: Sequence[str], declared: bool = False
) -> MetricDifferences:
    differences = {m: paired_difference(baseline.values.get(m, {}), other.values.get(m, {})) for m in metrics}
    return MetricDifferences(baseline, other, differences, declared)


def detector_differences(
    detector: Sequence[ExperimentStats], experiments: Sequence[ExperimentStats], metrics: Sequence[str]
) -> list[MetricDifferences]:
    """The paired differences the main table shows under one detector's rows (``detector``: its
    experiments of one dataset and initialisation, in table order; ``experiments``: those of every
    detector there): each main DCL experiment minus the one main baseline of its network, then each
    main method of one's own minus the experiment it declares as its baseline (of the same
    headline metric), on every one of ``metrics``."""
    out = []
    for dcl in (e for e in detector if e.spec.method == "dcl" and e.spec.group == "main"):
        baselines = [
            e
            for e in detector
            if e.spec.method == "baseline" and e.spec.group == "main" and e.spec.network == dcl.spec.network
        ]
        if len(baselines) == 1:
            out.append(_metric_differences(baselines[0], dcl, metrics))
    by_name = {e.name: e for e in experiments}
    for own in (e for e in detector if e.spec.baseline is not None and e.spec.group == "main"):
        baseline = by_name.get(own.spec.baseline)
        if baseline is not None and baseline.spec.metric == own.spec.metric:
            out.append(_metric_differences(baseline, own, metrics, declared=True))
    return out


def is_base_point(experiment: ExperimentStats) -> bool:
    """An ablation point whose value is its base experiment's own (it reuses the base's runs)."""
    ablation = experiment.spec.ablation
    return ablation is not None and experiment.spec.run_dir == layout.RUN_DIR.format(
        experiment=ablation.base, seed=experiment.spec.seed
    )


def reference_baseline(experiments: Sequence[ExperimentStats], base: str) -> ExperimentStats | None:
    """The main baseline (no DCL) of an ablation's base experiment: same dataset, init and network
    (detector, backbone, schedule); for a method of one's own, the experiment it declares as baseline."""
    spec = next((e.spec for e in experiments if e.name == base), None)
    if spec is None:
        spec = next((e.spec for e in experiments if e.spec.ablation and e.spec.ablation.base == base), None)
    if spec is not None and spec.baseline is not None:  # DCL on top of a method of one's own: its declared baseline
        return next((e for e in experiments if e.name == spec.baseline), None)
    matches = [
        e
        for e in experiments
        if spec is not None
        and e.spec.method == "baseline"
        and e.spec.group == "main"
        and (e.spec.dataset, e.spec.init, e.spec.network) == (spec.dataset, spec.init, spec.network)
    ]
    return matches[0] if len(matches) == 1 else None


VALIDATION = "validation AP"  # the training curve of the periodic evaluation's AP


@dataclass(frozen=True)
class TrainingCurves:
    """The main experiments' training curves (pandas objects).

    Attributes:
        frame: every logged point: experiment, seed, iteration, key (a :data:`dcl.runs.TRAINING_KEYS`
            key or :data:`VALIDATION`), value.
        curves: mean, min and max over seeds, indexed by (experiment, key, iteration).
        seeds: how many seeds logged each (experiment, key).
    """

    frame: Any
    curves: Any
    seeds: Any


def _curve_points(experiments: Sequence[ExperimentStats]) -> list[tuple]:
    """(experiment, seed, iteration, key, value) of every logged point of the main experiments; the
    validation AP is the headline metric when the evaluation logs it, else COCO-style mask AP."""
    records = []
    for experiment in experiments:
        if experiment.spec.group != "main":
            continue
        headline = experiment.spec.metric.replace(".", "/")
        for run in experiment.runs:
            points = run.metrics or ()
            logged = {key for point in points for key in EVAL_KEYS if key in point}
            validation = headline if headline in logged else "segm/AP"
            for point in points:
                for key in TRAINING_KEYS:
                    if key in point:
                        records.append((experiment.name, run.expected.seed, point["iteration"], key, point[key]))
                if validation in point:
                    records.append(
                        (experiment.name, run.expected.seed, point["iteration"], VALIDATION, point[validation])
                    )
    return records


def training_curve_stats(experiments: Sequence[ExperimentStats]) -> TrainingCurves | None:
    """The main experiments' curves over seeds; None when no run logged any (no metrics.json)."""
    records = _curve_points(experiments)
    if not records:
        return None
    import pandas as pd  # only for the curves

    frame = pd.DataFrame.from_records(records, columns=["experiment", "seed", "iteration", "key", "value"])
    curves = frame.groupby(["experiment", "key", "iteration"], sort=True)["value"].agg(["mean", "min", "max"])
    seeds = frame.groupby(["experiment", "key"])["seed"].nunique()
    return TrainingCurves(frame, curves, seeds)


@dataclass(frozen=True)
class Reproduction:
    """A published number against one experiment that reproduces it (or ``experiment`` None)."""

    entry: PublishedEntry
    experiment: ExperimentStats | None
    summary: Summary
    verdict: str  # reproduced | not reproduced | cannot be judged | not in matrix | not reproducible
    reason: str

    @property
    def difference(self) -> float:
        return self.summary.mean - self.entry.value


def _judge(entry: PublishedEntry, experiment: ExperimentStats) -> Reproduction:
    by_seed = experiment.values.get(entry.metric, {})
    summary = summarize(by_seed[s] for s in sorted(by_seed))
    expected, n = experiment.expected, summary.n
    lacking = [r.expected.seed for r in experiment.runs if r.eval is not None and r.expected.seed not in by_seed]
    if lacking:
        return Reproduction(
            entry,
            experiment,
            summary,
            "cannot be judged",
            f"eval.json of seed {', '.join(map(str, lacking))} has no {entry.metric}",
        )
    if n < expected:
        shown = f"{n}/{expected} seeds with results"
        missing = [f"{r.expected.seed} ({r.status})" for r in experiment.runs if r.expected.seed not in by_seed]
        return Reproduction(
            entry, experiment, summary, "cannot be judged", f"{shown}; waiting for seed {', '.join(missing)}"
        )
    difference = summary.mean - entry.value
    if experiment.spec.kind == "released":
        ok = abs(difference) <= entry.tolerance + 1e-9
        rule = f"|value − published| = {abs(difference):.2f} {'≤' if ok else '>'} {entry.tolerance:g} (published precision)"
        return Reproduction(entry, experiment, summary, "reproduced" if ok else "not reproduced", rule)
    if n < 2:
        return Reproduction(
            entry, experiment, summary, "cannot be judged", "a single seed has no spread: configure at least 2 seeds"
        )
    limit = SPREAD_FACTOR * summary.std
    ok = abs(difference) <= limit + 1e-9
    rule = f"|mean − published| = {abs(difference):.2f} {'≤' if ok else '>'} 2 std = {limit:.2f}"
    return Reproduction(entry, experiment, summary, "reproduced" if ok else "not reproduced", rule)


def reproduction(entries: Sequence[PublishedEntry], experiments: Sequence[ExperimentStats]) -> list[Reproduction]:
    """Judge every published entry against each main/released experiment of the same model:
    dataset, init, method, detector, backbone and schedule (:attr:`PublishedEntry.identity`; the
    entry's metric is read from that experiment's eval.json). Another backbone's or schedule's
    number never judges an experiment.

    Returns:
        One row per (entry, matching experiment); an entry without a match gets one row with
        ``experiment=None`` (verdict "not reproducible" or "not in matrix").
    """
    rows = []
    for entry in entries:
        if not entry.reproducible:
            rows.append(
                Reproduction(
                    entry, None, summarize([]), "not reproducible", entry.note or "not reproduced by this pipeline"
                )
            )
            continue
        matches = [e for e in experiments if e.spec.group in ("main", "released") and e.spec.identity == entry.identity]
        if not matches:
            rows.append(
                Reproduction(
                    entry,
                    None,
                    summarize([]),
                    "not in matrix",
                    f"no experiment of this model ({describe_identity(entry.identity)}) in experiments.json",
                )
            )
        rows.extend(_judge(entry, e) for e in matches)
    return rows
