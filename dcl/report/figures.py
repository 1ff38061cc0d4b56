"""The report's figures (matplotlib, Agg, no pyplot state): PNG and PDF, deterministic.

Four figures, always written under fixed names so the workflow can declare them as outputs:
``error_breakdown``, ``ablations``, ``training_curves``, ``reproduced_vs_published``. A figure with
nothing to plot is written as a clearly labelled "No data: <why>" panel rather than an empty
axes, and :func:`write_figures` returns the reason so the summary can say so.

Style: Okabe-Ito colours (colour-blind safe; baselines blue, DCL orange/vermillion, a lighter
shade for COCO init; RefineMask: dotted bars, dashed lines, triangles), labelled axes with
units, fonts readable at print width (7 inches). Files carry no timestamps or software versions
(PNG ``Software``, PDF ``Creator``/``Producer``/``CreationDate`` are dropped), so an unchanged
input gives byte-identical files.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter

from dcl.io import atomic_path
from dcl.report.outputs import FIGURE_FORMATS, FIGURE_NAMES
from dcl.report.analysis import (
    VALIDATION,
    ExperimentStats,
    Reproduction,
    TrainingCurves,
    error_types,
    is_base_point,
    reference_baseline,
    training_curve_stats,
)
from dcl.runs import TRAINING_KEYS
from dcl.report.labels import (
    dataset_name,
    format_value,
    init_name,
    metric_name,
    network_name,
    spec_method_name,
    value_sort_key,
)

__all__ = ["OKABE_ITO", "write_figures"]

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
_MODEL_COLORS = {
    ("baseline", "imagenet"): "#0072B2",
    ("baseline", "coco"): "#56B4E9",
    ("baseline", "scratch"): "#009E73",
    ("dcl", "imagenet"): "#D55E00",
    ("dcl", "coco"): "#E69F00",
    ("dcl", "scratch"): "#CC79A7",
}
_FALLBACK_COLORS = ("#000000", "#009E73", "#CC79A7", "#F0E442")
# A method of one's own (experiments.json's `method_label`): a colour of its own, picked by its
# name (stable whatever else is plotted; grey, yellow, black, then the rest of Okabe-Ito), and
# cross-hatched bars, dash-dot lines and diamond markers.
_OWN_COLORS = ("#999999", "#F0E442", "#000000", "#56B4E9", "#E69F00", "#009E73")
_OWN_HATCH = "xx"
_OWN_LINE = "-."
_OWN_MARKER = "D"
# Colour says method and init; a detector other than Mask R-CNN gets its own hatch, line and marker.
_DETECTOR_HATCH = {"refinemask": ".."}
_DETECTOR_LINE = {"refinemask": "--"}
_DETECTOR_MARKER = {"refinemask": "^"}
_WIDTH = 7.0  # inches: a two-column page width
_VALIDATION = VALIDATION  # the training-curves column of the periodic evaluation
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "lines.linewidth": 1.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "savefig.dpi": 200,
}
_CURVE_LABELS = {
    "total_loss": ("total loss", "loss"),
    "loss_mask": ("loss_mask", "loss"),
    "loss_contrast": ("loss_contrast (DCL)", "loss"),
    "lr": ("learning rate", "learning rate"),
    _VALIDATION: ("validation AP", "AP (%)"),  # of the periodic evaluation (TEST.EVAL_PERIOD)
}
_CURVES = TRAINING_KEYS + (_VALIDATION,)
# Each figure is written once per format of FIGURE_FORMATS; the metadata dropped keeps files
# byte-identical.
_SAVE_OPTIONS = {
    "png": {"metadata": {"Software": None}},
    "pdf": {"metadata": {"Creator": None, "Producer": None, "CreationDate": None}},
}


def _own(spec: Any) -> bool:
    return getattr(spec, "method_label", None) is not None


def _color(spec: Any, index: int = 0) -> str:
    if _own(spec):
        return _OWN_COLORS[zlib.crc32(spec.method.encode()) % len(_OWN_COLORS)]
    return _MODEL_COLORS.get((spec.method, spec.init), _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _hatch(spec: Any) -> str | None:
    if spec.group == "released":
        return "//"
    return _OWN_HATCH if _own(spec) else _DETECTOR_HATCH.get(spec.model)


def _line(spec: Any) -> str:
    return _OWN_LINE if _own(spec) else _DETECTOR_LINE.get(spec.model, "-")


def _marker(spec: Any, default: str = "o") -> str:
    return _OWN_MARKER if _own(spec) else _DETECTOR_MARKER.get(spec.model, default)


def _model_label(experiment: ExperimentStats, named: bool = False) -> str:
    """``named``: Mask R-CNN's rows say so too (beside other detectors), as in the tables."""
    spec = experiment.spec
    label = f"{spec_method_name(spec, named)}, {init_name(spec.init)} init"
    return label + (" (released)" if spec.group == "released" else "")


def _save(figure: Figure, directory: Path, name: str) -> None:
    for extension in FIGURE_FORMATS:
        with atomic_path(directory / f"{name}.{extension}") as tmp:
            figure.savefig(tmp, format=extension, **_SAVE_OPTIONS[extension])


def _no_data(title: str, reason: str) -> tuple[Figure, str]:
    figure = Figure(figsize=(_WIDTH, 1.4), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0.5, 0.5, f"{title}\nNo data: {reason}", ha="center", va="center", fontsize=11, wrap=True)
    return figure, reason


def axis_label(metrics: Sequence[str]) -> str:
    """What an AP axis shows: ``Cityscapes AP (%)``, ``mask AP (%)``, ``box AP (%)``."""
    names = []
    for metric in metrics:
        family, _, stat = metric.partition(".")
        names.append({"cityscapes": "Cityscapes ", "segm": "mask ", "bbox": "box "}.get(family, "") + stat)
    return f"{' / '.join(dict.fromkeys(names))} (%)"


def _bar_offsets(count: int, width: float) -> np.ndarray:
    return (np.arange(count) - (count - 1) / 2) * width


# ----------------------------------------------------------------------------- error breakdown
def error_breakdown(experiments: Sequence[ExperimentStats]) -> tuple[Figure, str]:
    """Rows: datasets; columns: corrected | legacy semantics; grouped bars per model."""
    title = "Segmentation-error breakdown"
    by_dataset: dict[str, list[ExperimentStats]] = {}
    for experiment in experiments:
        if experiment.spec.group != "ablation" and (experiment.n_errors(False) or experiment.n_errors(True)):
            by_dataset.setdefault(experiment.spec.dataset, []).append(experiment)
    if not by_dataset:
        return _no_data(title, "no baseline/DCL run has an errors.json yet")
    figure = Figure(figsize=(_WIDTH, 2.4 * len(by_dataset) + 0.6), layout="constrained")
    grid = figure.subplots(len(by_dataset), 2, squeeze=False, sharey="row")
    for row, (dataset, models) in enumerate(by_dataset.items()):
        types = error_types(models)
        positions = np.arange(len(types))
        width = 0.8 / len(models)
        offsets = _bar_offsets(len(models), width)
        named = len({m.spec.model for m in models}) > 1
        for column, (legacy, semantics) in enumerate(((False, "corrected"), (True, "legacy (original tool)"))):
            axes = grid[row][column]
            for index, experiment in enumerate(models):
                summaries = [experiment.error_summary(t, legacy) for t in types]
                heights = [0.0 if math.isnan(s.mean) else s.mean for s in summaries]
                spreads = [s.std for s in summaries]  # NaN (one seed): no error bar, not a zero one
                axes.bar(
                    positions + offsets[index],
                    heights,
                    width,
                    yerr=spreads,
                    capsize=2,
                    color=_color(experiment.spec, index),
                    edgecolor="black",
                    linewidth=0.5,
                    hatch=_hatch(experiment.spec),
                    label=f"{_model_label(experiment, named)} (n={experiment.n_errors(False)}, "
                    f"legacy {experiment.n_errors(True)})"
                    if experiment.n_errors(False) != experiment.n_errors(True)
                    else f"{_model_label(experiment, named)} (n={experiment.n_errors(False)})",
                )
            axes.set_xticks(positions, types)
            axes.set_title(f"{dataset_name(dataset)}: {semantics}")
            axes.set_xlabel("error type removed")
            axes.axhline(0, color="black", linewidth=0.5)
            if column == 0:
                axes.set_ylabel("mask AP gain (points)")
            else:
                axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="model (seeds)")
    figure.suptitle("AP gain from removing each error type (mean ± std over seeds)")
    return figure, ""


# ----------------------------------------------------------------------------- ablations
def _draw_sweep(
    axes: Any, base: str, members: Sequence[ExperimentStats], position: dict[Any, float], color: str
) -> set[str]:
    """One sweep around ``base``: each seed as a point, mean ± std as a line with error bars, the
    base value as a star. Returns the metrics drawn."""
    metrics = set()
    xs, means, stds = [], [], []
    for experiment in members:
        metric = experiment.spec.metric
        metrics.add(metric)
        seeds = experiment.values.get(metric, {})
        x = position[experiment.spec.ablation.value]
        axes.plot(
            [x] * len(seeds),
            [seeds[s] for s in sorted(seeds)],
            "o",
            color=color,
            alpha=0.45,
            markersize=3.5,
            markeredgewidth=0,
        )
        summary = experiment.summary(metric)
        if summary.n:
            xs.append(x)
            means.append(summary.mean)
            stds.append(summary.std)  # NaN (one seed): no error bar
    axes.errorbar(
        xs,
        means,
        yerr=stds,
        color=color,
        marker="s",
        markersize=4,
        capsize=3,
        label=f"{spec_method_name(members[0].spec) if _own(members[0].spec) else 'DCL'} (base: {base})",
    )
    for experiment in members:
        summary = experiment.summary(experiment.spec.metric)
        if is_base_point(experiment) and summary.n:
            axes.plot(
                [position[experiment.spec.ablation.value]],
                [summary.mean],
                marker="*",
                color=color,
                markersize=12,
                markeredgecolor="black",
                markeredgewidth=0.5,
                linestyle="none",
                label="base value",
            )
    return metrics


def _draw_reference(axes: Any, baseline: ExperimentStats) -> None:
    """The baseline without DCL: its mean as a dashed line, ± std as a band."""
    summary = baseline.summary(baseline.spec.metric)
    if not summary.n:
        return
    color = _color(baseline.spec)
    axes.axhline(summary.mean, color=color, linestyle="--", linewidth=1.0, label=f"baseline, no DCL (n={summary.n})")
    if not math.isnan(summary.std):
        axes.axhspan(summary.mean - summary.std, summary.mean + summary.std, color=color, alpha=0.12, linewidth=0)


def _ablation_panel(
    axes: Any, parameter: str, bases: dict[str, list[ExperimentStats]], experiments: Sequence[ExperimentStats]
) -> None:
    """One swept parameter: a sweep per base experiment (each its colour) and its reference baseline."""
    values = sorted({e.spec.ablation.value for es in bases.values() for e in es}, key=value_sort_key)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else float(i)) for i, v in enumerate(values)}
    metrics: set[str] = set()
    for color_index, (base, members) in enumerate(sorted(bases.items())):
        color = OKABE_ITO[(color_index * 5 + 5) % len(OKABE_ITO)]  # vermillion first, then varied
        members = sorted(members, key=lambda e: value_sort_key(e.spec.ablation.value))
        metrics |= _draw_sweep(axes, base, members, position, color)
        baseline = reference_baseline(experiments, base)
        if baseline is not None:
            _draw_reference(axes, baseline)
    axes.set_title(parameter)
    axes.legend(loc="best", frameon=False, fontsize=7)
    if not numeric:
        axes.set_xticks([position[v] for v in values], [format_value(v) for v in values])
    elif min(values) > 0 and max(values) >= 8 * min(values):
        # Sweeps like NUM_SAMPLES 8..64 or TEMPERATURE 0.03..0.5 are geometric.
        axes.set_xscale("log")
        axes.set_xticks(values, [format_value(v) for v in values])
        axes.minorticks_off()
    axes.set_xlabel(parameter)
    axes.set_ylabel(axis_label(sorted(metrics)))


def ablation_figure(experiments: Sequence[ExperimentStats]) -> tuple[Figure, str]:
    """One panel per swept parameter: seed values as points, mean ± std as a line with error bars."""
    title = "Ablations"
    sweeps: dict[str, dict[str, list[ExperimentStats]]] = {}
    for experiment in experiments:
        ablation = experiment.spec.ablation
        if ablation is not None:
            sweeps.setdefault(ablation.parameter, {}).setdefault(ablation.base, []).append(experiment)
    if not sweeps:
        return _no_data(title, "no ablation runs in experiments.json")
    sweeps = {p: b for p, b in sweeps.items() if any(e.n_eval for es in b.values() for e in es)}
    if not sweeps:
        return _no_data(title, "no ablation run has results yet")
    parameters = sorted(sweeps)
    columns = min(2, len(parameters))
    rows = math.ceil(len(parameters) / columns)
    figure = Figure(figsize=(_WIDTH, 2.6 * rows + 0.4), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, parameter in enumerate(parameters):
        _ablation_panel(grid[index // columns][index % columns], parameter, sweeps[parameter], experiments)
    for index in range(len(parameters), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    all_bases = sorted({base for bases in sweeps.values() for base in bases})
    shared = f"base experiment {all_bases[0]}" if len(all_bases) == 1 else "several base experiments"
    figure.suptitle(
        f"Headline AP against each swept DCL hyper-parameter ({shared})\n"
        "points: seeds; squares: mean ± std over seeds; star: the base value;\n"
        "dashed line and band: the baseline without DCL, mean ± std"
    )
    return figure, ""


# ----------------------------------------------------------------------------- training curves
def _iteration_ticks(row: Sequence[Any], last: float) -> None:
    """Three ticks, in thousands: the start, the middle and the end of the schedule (0, 45k, 90k;
    0, 12k, 24k): a ~1.3-inch panel has room for three short labels, not for "75000"-wide ones
    (which overlapped at COCO's 90k), nor for four ("30k60k90k" ran together).

    Args:
        row: one dataset's panels (one shared iteration axis).
        last: the last logged iteration (detectron2 logs max_iter - 1), so the schedule's end gets
            a tick, which the view limits' margins would otherwise push past.
    """
    end = float(f"{last + 1:.2g}")  # two significant digits: a run that ended early still reads
    ticks = [0, end / 2, end]
    for axes in row:
        axes.xaxis.set_major_locator(FixedLocator(ticks))
        axes.set_xlim(-0.03 * end, 1.03 * max(end, last + 1))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"))


def _curve_panel(axes: Any, key: str, members: Sequence[ExperimentStats], found: TrainingCurves, named: bool) -> None:
    """One dataset's curves of ``key``: per experiment the mean over seeds, its min-max band; a
    note where none logged it."""
    drawn = False
    for index, experiment in enumerate(members):
        try:
            curve = found.curves.loc[(experiment.name, key)]
        except KeyError:
            continue
        color = _color(experiment.spec, index)
        iterations = curve.index.to_numpy()
        axes.fill_between(
            iterations, curve["min"].to_numpy(), curve["max"].to_numpy(), color=color, alpha=0.2, linewidth=0
        )
        seeds = int(found.seeds[(experiment.name, key)])
        # Evaluations are few points: marked, so a single one is visible.
        axes.plot(
            iterations,
            curve["mean"].to_numpy(),
            color=color,
            marker="o" if key == _VALIDATION else None,
            linestyle=_line(experiment.spec),
            markersize=3,
            label=f"{_model_label(experiment, named)} (n={seeds})",
        )
        drawn = True
    if not drawn:
        note = {
            "loss_contrast": "not logged\n(no DCL run)",
            _VALIDATION: "not logged\n(TEST.EVAL_PERIOD 0?)",
        }.get(key, "not logged")
        axes.text(0.5, 0.5, note, ha="center", va="center", transform=axes.transAxes)
    elif key == "lr":
        axes.set_yscale("log")


def training_curves(experiments: Sequence[ExperimentStats]) -> tuple[Figure, str]:
    """Rows: datasets; columns: total_loss, loss_mask, loss_contrast, lr and the periodic
    evaluation's AP against iteration; one line per main experiment (mean over seeds, shaded
    min-max over seeds). The AP is the run's headline metric when the evaluation logs it
    (``cityscapes/AP``), else COCO-style mask AP (``segm/AP``)."""
    found = training_curve_stats(experiments)
    if found is None:
        return _no_data("Training curves", "no finished training run of the main experiments has a metrics.json")
    frame = found.frame
    by_name = {e.name: e for e in experiments}
    datasets: dict[str, list[ExperimentStats]] = {}
    for name in sorted(frame["experiment"].unique(), key=lambda n: experiments.index(by_name[n])):
        datasets.setdefault(by_name[name].spec.dataset, []).append(by_name[name])
    figure = Figure(figsize=(_WIDTH + 3.5, 2.0 * len(datasets) + 0.5), layout="constrained")
    # One iteration axis per dataset: the validation AP (first point at TEST.EVAL_PERIOD) lines up
    # with the losses.
    grid = figure.subplots(len(datasets), len(_CURVES), squeeze=False, sharex="row")
    for row, (dataset, members) in enumerate(datasets.items()):
        named = len({m.spec.model for m in members}) > 1
        for column, key in enumerate(_CURVES):
            axes = grid[row][column]
            label, unit = _CURVE_LABELS[key]
            _curve_panel(axes, key, members, found, named)
            if row == 0:
                axes.set_title(label)
            axes.set_xlabel("iteration")
            axes.set_ylabel(f"{dataset_name(dataset)}\n{unit}" if column == 0 else unit)
        _iteration_ticks(grid[row], frame.loc[frame["experiment"].isin([m.name for m in members]), "iteration"].max())
        handles, labels = grid[row][0].get_legend_handles_labels()
        grid[row][-1].legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title=dataset_name(dataset)
        )
    figure.suptitle("Training curves from metrics.json (line: mean over seeds; band: min–max)")
    return figure, ""


# ----------------------------------------------------------------------------- published vs reproduced
def reproduced_vs_published(rows: Sequence[Reproduction]) -> tuple[Figure, str]:
    """One row per published number that has results: the published value (black diamond) and
    the reproduced mean with ± std (thick) and ± 2 std (thin) over seeds, the verdict's band."""
    title = "Reproduced vs published AP"
    points = [r for r in rows if r.experiment is not None and r.summary.n]
    if not points:
        if any(r.experiment is not None for r in rows):
            reason = "no experiment with a published number has results yet"
        else:
            reason = "no experiment in experiments.json is a model with a published number"
        return _no_data(title, reason)
    figure = Figure(figsize=(_WIDTH, 0.42 * len(points) + 1.3), layout="constrained")
    axes = figure.add_subplot()
    labels = []
    seen: set[str] = set()
    named = len({item.experiment.spec.model for item in points}) > 1
    # Several backbones or schedules (the model zoo's 1x and 3x): each row says which it is.
    networks = len({item.experiment.spec.network for item in points}) > 1
    for row, item in enumerate(points):
        y = len(points) - 1 - row  # first entry on top
        spec, summary = item.experiment.spec, item.summary
        released = spec.kind == "released"
        color = _color(spec) if _own(spec) else _MODEL_COLORS.get((spec.method, "imagenet"), "#000000")  # = method
        spread = 0.0 if math.isnan(summary.std) else summary.std
        if spread:
            axes.plot([summary.mean - 2 * spread, summary.mean + 2 * spread], [y, y], color=color, linewidth=1.0)
            axes.plot([summary.mean - spread, summary.mean + spread], [y, y], color=color, linewidth=3.5)
        kind = "released checkpoint" if released else "trained, mean ± std (thin: ± 2 std)"
        label = f"{spec_method_name(spec, named)}, {kind}"
        marker = "s" if released else _marker(spec)
        axes.plot([summary.mean], [y], marker, color=color, markersize=6, label=None if label in seen else label)
        seen.add(label)
        axes.plot(
            [item.entry.value],
            [y],
            "D",
            markerfacecolor="white",
            markeredgecolor="black",
            markersize=6,
            label=None if "published" in seen else "published",
        )
        seen.add("published")
        labels.append(
            f"{dataset_name(spec.dataset)}, {init_name(spec.init)} init, "
            f"{spec_method_name(spec, named)}{' (released)' if released else ''}"
            f"{', ' + network_name(spec.backbone, spec.schedule) if networks else ''}: {metric_name(item.entry.metric)}"
        )
    axes.set_yticks(range(len(points)), labels[::-1])
    axes.set_ylim(-0.7, len(points) - 0.3)
    axes.grid(axis="y", visible=False)
    metrics = sorted({r.entry.metric for r in points})
    axes.set_xlabel(axis_label(metrics) if len(metrics) == 1 else "AP (%)")
    axes.set_title(title)
    verdicts = axes.twinx()  # the verdict of each row, on the right
    verdicts.set_ylim(axes.get_ylim())
    verdicts.set_yticks(range(len(points)), [r.verdict for r in points][::-1])
    verdicts.tick_params(length=0)
    verdicts.grid(False)
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    return figure, ""


def write_figures(
    directory: Path, experiments: Sequence[ExperimentStats], reproduction_rows: Sequence[Reproduction]
) -> dict[str, str]:
    """Write all figures as ``{name}.png`` and ``{name}.pdf`` under ``directory``.

    Returns:
        name -> "" when the figure shows data, else the reason it is a "No data" note.
    """
    builders: dict[str, Callable[[], tuple[Figure, str]]] = {
        "error_breakdown": lambda: error_breakdown(experiments),
        "ablations": lambda: ablation_figure(experiments),
        "training_curves": lambda: training_curves(experiments),
        "reproduced_vs_published": lambda: reproduced_vs_published(reproduction_rows),
    }
    reasons = {}
    # rcdefaults inside rc_context: a user's matplotlibrc must not change the files.
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_STYLE)
        for name in FIGURE_NAMES:
            figure, reasons[name] = builders[name]()
            _save(figure, directory, name)
    return reasons
