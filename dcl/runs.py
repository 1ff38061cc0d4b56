"""A run of the pipeline, one owner: its record in ``experiments.json``, its folder, its state.

``dcl plan`` writes the records (:meth:`ExpectedRun.to_record`, built by
``dcl.workflow.experiments``); ``dcl report`` and ``dcl status`` read them back
(:func:`load_experiments`) and read each run folder with :func:`load_run`, so the tables, the
run inventory and the status view can never disagree about a run. :data:`STATES` is the one
vocabulary of run states.

:func:`load_run` never raises for bad run files: a missing, truncated or mistyped file becomes a
state (``missing``, ``running``, ``failed``, ``incomplete``) with a reason, so one broken run cannot
stop the report or silently vanish from it. Only data a table may use is exposed on
:class:`RunResult`: results of a run whose training did not complete are never used, even when a
stale ``eval.json`` is lying around. Formats: ``docs/design.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from dcl import layout, names
from dcl.io import InputError, is_int, is_number, read_json, require_str, type_name
from dcl.runrecord import RECORD_STATES, RUN_RECORD, describe_progress, progress, read_record

__all__ = [
    "FAMILY_STATS",
    "FOLDER_STATES",
    "STATES",
    "EVAL_KEYS",
    "TRAINING_KEYS",
    "Ablation",
    "add_run_arguments",
    "check_metric",
    "parse_model",
    "parse_variant",
    "ExpectedRun",
    "ErrorAnalysis",
    "RunResult",
    "load_experiments",
    "ExperimentsFile",
    "read_experiments",
    "load_run",
    "run_log",
    "status_totals",
]

# Stats of each eval.json section the tables show, in display order (design.md, eval.json).
FAMILY_STATS: dict[str, tuple[str, ...]] = {
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "cityscapes": ("AP", "AP50"),
}
# The one vocabulary of run states (`dcl status`, the run inventory, the report's summary):
#   finished     training (or inference) done, and every result file of its run folder readable
#   running      run.json says so and its job or process is alive (or cannot be checked)
#   queued       a Slurm job for it is waiting (a first chunk, or the next one after a stop)
#   interrupted  stopped before the end (time limit, pre-emption, or a job that ended without
#                closing run.json); the workflow continues it from its checkpoint
#   incomplete   trained, but a result file of its run folder is missing or unreadable
#   failed       the training failed (run.json says why), or its record is unusable
#   pending      not started: the workflow's work directory is here but has no record of it
#   missing      no trace of it (no results, no work directory: e.g. a copied results tree)
STATES = ("finished", "running", "queued", "interrupted", "incomplete", "failed", "pending", "missing")
# What the results tree alone tells (load_run: the report and its inventory); queued, interrupted
# and pending need the live work directory or squeue (dcl status).
FOLDER_STATES = tuple(state for state in STATES if state not in ("queued", "interrupted", "pending"))
KINDS = ("train", "released")
# detectron2 metrics.json scalars the training-curve figure draws.
TRAINING_KEYS = ("total_loss", "loss_mask", "loss_contrast", "lr")
# The periodic evaluation's AP (TEST.EVAL_PERIOD) in metrics.json: "{eval.json section}/AP".
EVAL_KEYS = tuple(f"{family}/AP" for family in FAMILY_STATS)


@dataclass(frozen=True)
class Ablation:
    """One point of a hyper-parameter sweep (``experiments.json``'s ``ablation`` object)."""

    parameter: str
    key: str
    value: bool | int | float | str
    base: str


@dataclass(frozen=True)
class ExpectedRun:
    """One run (experiment x seed) that ``experiments.json`` says should exist."""

    experiment: str
    seed: int
    kind: str
    dataset: str
    init: str
    method: str
    group: str
    ablation: Ablation | None
    metric: str
    run_dir: str
    model: str = "mask_rcnn"  # the detector family (experiments.json's optional `model`)
    backbone: str = names.DEFAULT_BACKBONE  # with `schedule`: which model of that family
    schedule: str | None = None
    # Where the workflow trains it (the live run.json) and each step's log, as paths from the
    # working directory of the caller (resolved from experiments.json); None/empty in older files.
    output_dir: str | None = field(default=None, compare=False)
    logs: dict[str, str] = field(default_factory=dict, compare=False)
    # A method of one's own (experiments.json's `method_label`, `baseline`, `dcl_on_top`; absent
    # for baseline and DCL): its display label and the experiment it is compared against.
    method_label: str | None = None
    baseline: str | None = None
    dcl_on_top: bool = False

    @property
    def label(self) -> str | None:
        """The method's own label (None for the built-in ones, which the tables name by model)."""
        return self.method_label

    def to_record(self) -> dict[str, Any]:
        """The run's entry in ``experiments.json`` (docs/design.md), without the ``output_dir`` and
        ``logs`` the planner adds: :func:`load_experiments` reads it back into an equal run."""
        return {
            "experiment": self.experiment,
            "seed": self.seed,
            "kind": self.kind,
            "dataset": self.dataset,
            "init": self.init,
            "method": self.method,
            "model": self.model,
            "backbone": self.backbone,
            "schedule": self.schedule,
            "group": self.group,
            "ablation": None if self.ablation is None else dataclasses.asdict(self.ablation),
            "metric": self.metric,
            "run_dir": self.run_dir,
            # Only for a method of one's own, so the built-in presets' files stay as they were.
            **(
                {"method_label": self.method_label, "baseline": self.baseline}
                | ({"dcl_on_top": True} if self.dcl_on_top else {})
                if self.method_label is not None
                else {}
            ),
        }

    @property
    def family(self) -> str:
        """The eval.json section of the headline metric (``cityscapes``, ``segm``, ``bbox``)."""
        return self.metric.split(".", 1)[0]

    @property
    def network(self) -> tuple[str, str, str | None]:
        """Detector family, backbone, schedule: what a DCL model and its baseline share."""
        return (self.model, self.backbone, self.schedule)

    @property
    def identity(self) -> tuple[str, str, str, str, str, str | None]:
        """The model this run trains or evaluates, as a published number names it
        (:attr:`PublishedEntry.identity`): dataset, init, method, detector, backbone, schedule."""
        return (self.dataset, self.init, self.method, *self.network)


@dataclass(frozen=True)
class ErrorAnalysis:
    """The part of an ``errors.json`` the report uses: baseline AP and the AP gain per error type."""

    baseline_ap: float
    gains: dict[str, float]
    gt: str | None = None  # base name of the GT file the analysis used


@dataclass
class RunResult:
    """What one run folder holds, with its inventory status.

    ``eval``, ``errors``, ``errors_legacy`` and ``metrics`` are set only when training completed
    and that file is valid; everything else is in ``status`` and ``problems``.
    """

    expected: ExpectedRun
    status: str
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] | None = None  # validated run.json
    eval: dict[str, float | None] | None = None  # flat: {"segm.AP": 35.2, "cityscapes.AP50": ...}
    errors: ErrorAnalysis | None = None
    errors_legacy: ErrorAnalysis | None = None
    metrics: list[dict[str, float]] | None = None  # per logged iteration: iteration + TRAINING_KEYS / EVAL_KEYS
    warnings: list[str] = field(default_factory=list)  # what was skipped; does not change the status
    # On the occlusion subset (COCO-OCC), where the run has it: eval_occ.json, errors_occ.json, ...
    eval_occ: dict[str, float | None] | None = None
    errors_occ: ErrorAnalysis | None = None
    errors_legacy_occ: ErrorAnalysis | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.problems + self.warnings)


def status_totals(results: Sequence[RunResult]) -> str:
    """``"3 finished, 0 running, ..."``: runs per status, every status in FOLDER_STATES order."""
    return ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in FOLDER_STATES)


def check_metric(metric: str, where: str) -> None:
    family, _, stat = metric.partition(".")
    if family not in FAMILY_STATS or stat not in FAMILY_STATS[family]:
        known = ", ".join(f"{f}.{s}" for f, stats in FAMILY_STATS.items() for s in stats)
        raise InputError(f"{where}: unknown metric {metric!r} (known: {known})")


# ----------------------------------------------------------------------------- experiments.json
def _parse_ablation(value: Any, where: str) -> Ablation:
    if not isinstance(value, dict):
        raise InputError(f"{where}: 'ablation' must be an object or null, got {type_name(value)}")
    swept = value.get("value")
    if not isinstance(swept, (bool, int, float, str)) or (isinstance(swept, float) and not math.isfinite(swept)):
        raise InputError(f"{where}: ablation 'value' must be a number, boolean or string, got {type_name(swept)}")
    return Ablation(
        parameter=require_str(value, "parameter", f"{where} ablation"),
        key=require_str(value, "key", f"{where} ablation"),
        value=swept,
        base=require_str(value, "base", f"{where} ablation"),
    )


def _locations(record: dict, base: Path, where: str) -> dict[str, Any]:
    """``output_dir`` and ``logs`` of an experiments.json record (relative to its directory unless
    absolute) as paths from the working directory; absent in files written before they existed."""
    found: dict[str, Any] = {}
    output_dir, logs = record.get("output_dir"), record.get("logs", {})
    if output_dir is not None:
        if not isinstance(output_dir, str) or not output_dir:
            raise InputError(f"{where}: 'output_dir' must be a non-empty string, got {type_name(output_dir)}")
        found["output_dir"] = os.path.normpath(base / output_dir)
    if not isinstance(logs, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in logs.items()):
        raise InputError(f"{where}: 'logs' must be an object of step -> log path")
    found["logs"] = {step: os.path.normpath(base / log) for step, log in logs.items()}
    return found


def add_run_arguments(parser: argparse.ArgumentParser, results_help: str, *, optional: bool = False) -> None:
    """``RESULTS_DIR`` (``results/{preset}``; with ``optional``, may be left out: None) and
    ``--experiments PATH`` (default None: ``RESULTS_DIR/experiments.json``), for every command that
    reads the expected runs (``dcl report``, ``dcl status``)."""
    parser.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        type=Path,
        **({"nargs": "?", "default": None} if optional else {}),
        help=results_help,
    )
    parser.add_argument(
        "--experiments",
        metavar="PATH",
        type=Path,
        default=None,
        help="the expected runs (default: RESULTS_DIR/experiments.json, written by `dcl plan`)",
    )


@dataclass(frozen=True)
class ExperimentsFile:
    """``experiments.json`` read once: the preset, its runs in file order, and the occlusion subset
    (``{"path", "used"}``, or None without COCO runs)."""

    preset: str
    runs: list[ExpectedRun]
    occlusion_subset: dict[str, Any] | None


def read_experiments(path: str | os.PathLike) -> ExperimentsFile:
    """Read and validate ``experiments.json`` (the file ``dcl plan`` wrote).

    Raises:
        InputError: missing/unreadable file, a record with a missing or mistyped field (which
            record, which field), duplicate runs, or an experiment whose runs disagree on what
            they are (dataset, method, metric, ...).
    """
    path = Path(path)
    data = _read_experiments(path)
    runs: list[ExpectedRun] = []
    seen: set[tuple[str, int]] = set()
    identity: dict[str, tuple] = {}
    for index, record in enumerate(data["runs"]):
        where = f"{path}: runs[{index}]"
        run = _expected_run(record, path.parent, where)
        if (run.experiment, run.seed) in seen:
            raise InputError(f"{where}: run {run.experiment} seed {run.seed} is listed twice")
        seen.add((run.experiment, run.seed))
        # All seeds of one experiment must describe the same model, or its mean is meaningless.
        what = (run.kind, *run.identity, run.group, run.ablation, run.metric, run.method_label, run.baseline)
        if identity.setdefault(run.experiment, what) != what:
            raise InputError(
                f"{where}: experiment {run.experiment!r} has runs that disagree on "
                "kind/dataset/init/method/model/backbone/schedule/group/ablation/metric"
            )
        runs.append(run)
    _check_baselines(runs, path)
    return ExperimentsFile(data["preset"], runs, _occlusion_subset(data.get("occlusion_subset"), path))


def load_experiments(path: str | os.PathLike) -> tuple[str, list[ExpectedRun]]:
    """``(preset, runs)`` of :func:`read_experiments`."""
    experiments = read_experiments(path)
    return experiments.preset, experiments.runs


def _read_experiments(path: Path) -> dict[str, Any]:
    """``experiments.json`` as an object whose ``preset`` is a string and ``runs`` a non-empty list
    (the records not yet checked one by one)."""
    data = read_json(path, "experiments file")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise InputError(f"{path}: expected an object with a 'runs' list (written by `dcl plan`)")
    data.setdefault("preset", "")
    if not isinstance(data["preset"], str):
        raise InputError(f"{path}: 'preset' must be a string, got {type_name(data['preset'])}")
    if not data["runs"]:
        raise InputError(f"{path}: 'runs' is empty: there is nothing to report")
    return data


def _expected_run(record: Any, base: Path, where: str) -> ExpectedRun:
    """One record of ``experiments.json`` (``where``: which), checked field by field; ``base``:
    the file's folder, which its paths are relative to."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object, got {type_name(record)}")
    seed = record.get("seed")
    if not is_int(seed) or seed < 0:
        raise InputError(f"{where}: 'seed' must be a non-negative integer, got {type_name(seed)} {seed!r}")
    group = require_str(record, "group", where, names.GROUPS)
    ablation_value = record.get("ablation")
    if group == "ablation" and ablation_value is None:
        raise InputError(f"{where}: group 'ablation' needs an 'ablation' object (parameter, key, value, base)")
    if group != "ablation" and ablation_value is not None:
        raise InputError(f"{where}: 'ablation' is set but group is {group!r}, not 'ablation'")
    run = ExpectedRun(
        experiment=require_str(record, "experiment", where),
        seed=seed,
        kind=require_str(record, "kind", where, KINDS),
        dataset=require_str(record, "dataset", where),
        init=require_str(record, "init", where),
        method=require_str(record, "method", where),
        group=group,
        ablation=None if ablation_value is None else _parse_ablation(ablation_value, where),
        metric=require_str(record, "metric", where),
        run_dir=require_str(record, "run_dir", where),
        model=parse_model(record, where),
        **parse_variant(record, where),
        **_locations(record, base, where),
        **_own_method(record, where),
    )
    check_metric(run.metric, where)
    parts = PurePosixPath(run.run_dir).parts
    if not parts or PurePosixPath(run.run_dir).is_absolute() or ".." in parts:
        raise InputError(
            f"{where}: 'run_dir' {run.run_dir} must be a relative path inside the results "
            "directory (like runs/<experiment>/seed<seed>)"
        )
    return run


def _check_baselines(runs: list[ExpectedRun], path: Path) -> None:
    """Each run's ``baseline`` (a method of one's own) is an experiment of the same dataset in the file."""
    experiments = {run.experiment: run for run in runs}
    for index, run in enumerate(runs):
        other = experiments.get(run.baseline) if run.baseline is not None else None
        if run.baseline is not None and (other is None or other.dataset != run.dataset):
            raise InputError(
                f"{path}: runs[{index}]: 'baseline' {run.baseline!r} is not an experiment of dataset {run.dataset} "
                "in this file"
            )


def _own_method(record: dict, where: str) -> dict[str, Any]:
    """A method of one's own (not in :data:`dcl.names.METHODS`) carries its ``method_label`` and
    (a trained one) the ``baseline`` experiment it is compared against; the built-in ones neither."""
    method = record["method"]
    if method in names.METHODS:
        if "method_label" in record or "baseline" in record:
            raise InputError(
                f"{where}: 'method_label' and 'baseline' are for methods other than {', '.join(names.METHODS)}"
            )
        return {}
    label = record.get("method_label")
    if not isinstance(label, str) or not label:
        raise InputError(
            f"{where}: 'method' {method!r} is not one of {', '.join(names.METHODS)}: "
            f"a method of one's own needs 'method_label' (a non-empty string), got {type_name(label)} {label!r}"
        )
    baseline = record.get("baseline")
    if baseline is not None and not (isinstance(baseline, str) and baseline):
        raise InputError(f"{where}: 'baseline' must be an experiment name, got {type_name(baseline)} {baseline!r}")
    on_top = record.get("dcl_on_top", False)
    if not isinstance(on_top, bool):
        raise InputError(f"{where}: 'dcl_on_top' must be true or false, got {on_top!r}")
    return {"method_label": label, "baseline": baseline, "dcl_on_top": on_top}


def parse_model(record: dict, where: str) -> str:
    """The optional ``model`` field (detector family); ``mask_rcnn`` when absent."""
    model = record.get("model", "mask_rcnn")
    if not isinstance(model, str) or not model:
        raise InputError(f"{where}: 'model' must be a non-empty string, got {type_name(model)} {model!r}")
    return model


def parse_variant(record: dict, where: str) -> dict[str, Any]:
    """The optional ``backbone`` (default R50-FPN) and ``schedule`` (default none: the config's
    own recipe); files written before they existed describe R50-FPN models."""
    backbone = record.get("backbone", names.DEFAULT_BACKBONE)
    if not isinstance(backbone, str) or not backbone:
        raise InputError(f"{where}: 'backbone' must be a non-empty string, got {type_name(backbone)} {backbone!r}")
    schedule = record.get("schedule")
    if schedule is not None and not (isinstance(schedule, str) and re.match(names.SCHEDULE_PATTERN, schedule)):
        raise InputError(f"{where}: 'schedule' must be null or like 1x, 3x; got {type_name(schedule)} {schedule!r}")
    return {"backbone": backbone, "schedule": schedule}


def _occlusion_subset(value: Any, path: Path) -> dict[str, Any] | None:
    """``experiments.json``'s ``occlusion_subset``: ``{"path", "used"}``, or None (no COCO runs)."""
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("path"), str) and isinstance(value.get("used"), bool)):
        raise InputError(f"{path}: 'occlusion_subset' must be an object with 'path' (string) and 'used' (boolean)")
    return value


# ----------------------------------------------------------------------------- run folders
class _BadFile(Exception):
    """A run file that exists but cannot be used; the message becomes the inventory reason."""


def _read_run_json_file(path: Path) -> Any:
    try:
        return read_json(path, path.name)
    except InputError as error:
        # read_json names the full path; the inventory row already says which run it is.
        raise _BadFile(str(error).replace(f"{path.name} {path}", path.name).replace(str(path), path.name)) from None


def _validate_run_info(info: Any, expected: ExpectedRun) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise _BadFile(f"run.json: expected an object, got {type_name(info)}")
    if info.get("status") not in RECORD_STATES:
        raise _BadFile(f"run.json: 'status' must be one of {', '.join(RECORD_STATES)}; got {info.get('status')!r}")
    for key in ("iteration", "max_iter", "exit_code"):
        value = info.get(key)
        if value is not None and (not is_int(value) or (key != "exit_code" and value < 0)):
            raise _BadFile(
                f"run.json: '{key}' must be a non-negative integer or null, got {type_name(value)} {value!r}"
            )
    wall = info.get("wall_time_s")
    if wall is not None and (not is_number(wall) or wall < 0):
        raise _BadFile(f"run.json: 'wall_time_s' must be a non-negative number or null, got {type_name(wall)} {wall!r}")
    gpus = info.get("gpus")
    if gpus is not None:
        if not isinstance(gpus, dict):
            raise _BadFile(f"run.json: 'gpus' must be an object or null, got {type_name(gpus)}")
        count, gpu_type = gpus.get("count"), gpus.get("type")
        if count is not None and (not is_int(count) or count < 0):
            raise _BadFile(f"run.json: 'gpus.count' must be a non-negative integer, got {type_name(count)} {count!r}")
        if gpu_type is not None and not isinstance(gpu_type, str):
            raise _BadFile(f"run.json: 'gpus.type' must be a string or null, got {type_name(gpu_type)}")
    mode = info.get("mode")
    if mode is not None and mode not in ("train", "eval-only"):
        raise _BadFile(f"run.json: 'mode' must be 'train' or 'eval-only', got {mode!r}")
    seed = info.get("seed")
    if expected.kind == "train" and seed is not None and seed != expected.seed:
        raise _BadFile(f"run.json: seed is {seed!r} but experiments.json expects seed {expected.seed} here")
    return info


def _validate_eval(data: Any, expected: ExpectedRun) -> dict[str, float | None]:
    if not isinstance(data, dict):
        raise _BadFile(f"eval.json: expected an object, got {type_name(data)}")
    if not isinstance(data.get(expected.family), dict):
        raise _BadFile(f"eval.json: no '{expected.family}' section (needed for {expected.metric})")
    flat: dict[str, float | None] = {}
    for family, stats in FAMILY_STATS.items():
        section = data.get(family)
        if section is None and family != expected.family:
            continue
        if not isinstance(section, dict):
            raise _BadFile(f"eval.json: '{family}' must be an object, got {type_name(section)}")
        for stat in stats:
            if stat not in section:
                raise _BadFile(f"eval.json: '{family}.{stat}' is missing")
            value = section[stat]
            # null is COCO's -1: no GT in that area range.
            if value is not None and not is_number(value):
                raise _BadFile(
                    f"eval.json: '{family}.{stat}' must be a number or null, got {type_name(value)} {value!r}"
                )
            flat[f"{family}.{stat}"] = None if value is None else float(value)
    if flat[expected.metric] is None:
        raise _BadFile(f"eval.json: headline metric '{expected.metric}' is null")
    return flat


def _validate_errors(data: Any, name: str, legacy: bool) -> ErrorAnalysis:
    if not isinstance(data, dict):
        raise _BadFile(f"{name}: expected an object, got {type_name(data)}")
    flag = data.get("legacy_unmatched")
    if flag is not None and flag is not legacy:
        semantics = "legacy" if flag else "corrected"
        raise _BadFile(
            f"{name}: 'legacy_unmatched' is {json.dumps(flag)}: this is the {semantics} analysis, swapped files?"
        )
    baseline = data.get("baseline")
    if not isinstance(baseline, dict) or not is_number(baseline.get("AP")):
        raise _BadFile(f"{name}: 'baseline.AP' must be a number")
    delta = data.get("delta")
    if not isinstance(delta, dict):
        raise _BadFile(f"{name}: 'delta' must be an object of error type -> stats, got {type_name(delta)}")
    types = data.get("types", list(delta))
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise _BadFile(f"{name}: 'types' must be a list of strings")
    gains: dict[str, float] = {}
    for error_type in types:
        stats = delta.get(error_type)
        if not isinstance(stats, dict) or not is_number(stats.get("AP")):
            raise _BadFile(f"{name}: 'delta.{error_type}.AP' must be a number")
        gains[error_type] = float(stats["AP"])
    gt = data.get("gt")
    return ErrorAnalysis(
        baseline_ap=float(baseline["AP"]), gains=gains, gt=os.path.basename(gt) if isinstance(gt, str) and gt else None
    )


def _metrics_point(line: str) -> dict[str, float] | None:
    """One metrics.json line as iteration + TRAINING_KEYS / EVAL_KEYS (None: nothing to draw).

    Raises:
        ValueError: the line is not a valid record (the message says why).
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error.msg}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type_name(record)}")
    iteration = record.get("iteration")
    if not is_int(iteration):
        raise ValueError(f"'iteration' must be an integer, got {type_name(iteration)}")
    point: dict[str, float] = {"iteration": iteration}
    for key in TRAINING_KEYS + EVAL_KEYS:
        if key in record:
            value = record[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"'{key}' must be a number, got {type_name(value)}")
            point[key] = float(value)  # NaN/inf kept: a diverged loss is worth seeing
    return point if len(point) > 1 else None  # other lines (timing only, other metrics) have nothing to draw


def _read_metrics(path: Path) -> tuple[list[dict[str, float]], list[str]]:
    """The training points of metrics.json, and a message per line that could not be read.

    detectron2 appends one JSON line per logging period, so a killed run can leave a torn last
    line, and one damaged line must not hide the others: bad lines are skipped and reported.
    """
    records: list[dict[str, float]] = []
    skipped: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise _BadFile(f"metrics.json cannot be read: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            point = _metrics_point(line)
        except ValueError as error:
            hint = " (truncated last line?)" if number == len(lines) else ""
            skipped.append(f"line {number}: {error}{hint}")
            continue
        if point is not None:
            records.append(point)
    return records, skipped


# A run folder's files (dcl.layout): the evaluation and both error analyses, on val and on the
# occlusion subset.
_EVAL, _ERRORS, _LEGACY = (f"{name}.json" for name in (layout.EVALUATION, *layout.ERROR_ANALYSES))
_EVAL_OCC, _ERRORS_OCC, _LEGACY_OCC = (
    f"{layout.on_occlusion(name)}.json" for name in (layout.EVALUATION, *layout.ERROR_ANALYSES)
)


def _required_files(expected: ExpectedRun) -> tuple[str, ...]:
    files = (_EVAL, _ERRORS, _LEGACY)
    # Released checkpoints are only evaluated: no training log, run.json optional.
    return (RUN_RECORD, layout.TRAINING_METRICS, *files) if expected.kind == "train" else files


def load_run(results_dir: str | os.PathLike, expected: ExpectedRun) -> RunResult:
    """Read one run folder and decide its status; never raises for problems in the run's files.

    Status, by precedence: ``missing`` (no folder or no result file), ``running`` (run.json says
    so), ``failed`` (training failed, or a file is unreadable/truncated/mistyped), ``incomplete``
    (interrupted, stopped before ``max_iter``, or a step's file not written yet), else ``finished``.

    Args:
        results_dir: ``results/{preset}``; ``expected.run_dir`` is relative to it.
        expected: the run experiments.json lists.
    Returns:
        A :class:`RunResult`; its data fields are set only for files a table may use.
    """
    folder = Path(results_dir) / expected.run_dir
    result = RunResult(expected=expected, status="finished")
    if not (folder / RUN_RECORD).exists():
        # Not finished (its run.json reaches the results only then): the live record, if any.
        live = _live_result(expected)
        if live is not None:
            return live
    if not folder.is_dir():
        result.status, result.problems = "missing", [f"no run folder {expected.run_dir}"]
        return result
    files = (RUN_RECORD, layout.TRAINING_METRICS, _EVAL, _ERRORS, _LEGACY)
    present = {name for name in files if (folder / name).exists()}
    optional = {name for name in (_EVAL_OCC, _ERRORS_OCC, _LEGACY_OCC) if (folder / name).exists()}
    if not present:
        result.status, result.problems = "missing", ["run folder has no result files yet"]
        return result

    broken: list[str] = []  # -> failed
    info = None
    if RUN_RECORD in present:
        try:
            info = _validate_run_info(_read_run_json_file(folder / RUN_RECORD), expected)
        except _BadFile as error:
            broken.append(str(error))
    result.info = info

    state = info.get("status") if info else None
    if state == "running":
        result.status = "running"
        result.problems = [f"run.json says running{_progress(info)}; if no job is running, it was killed: re-run it"]
        return result
    unfinished = _training_problems(info, expected, broken)  # -> incomplete
    training_complete = (state == "finished" and not unfinished) or (
        expected.kind == "released" and RUN_RECORD not in present
    )
    loaded = _load_files(folder, present | optional, expected, broken)
    missing = [name for name in _required_files(expected) if name not in present]
    if missing and (training_complete or (not broken and not unfinished and info is None)):
        unfinished.append(f"not written yet: {', '.join(missing)}")
    _take_results(result, loaded, training_complete)
    result.problems = broken + unfinished
    result.status = "failed" if broken else "incomplete" if unfinished else "finished"
    return result


def _training_problems(info: dict | None, expected: ExpectedRun, broken: list[str]) -> list[str]:
    """What run.json (``info``, not running) says is wrong: a failed training goes to ``broken``;
    returned, why the training is not complete (interrupted, stopped before ``max_iter``)."""
    state = info.get("status") if info else None
    unfinished: list[str] = []
    if state == "failed":
        detail = ", ".join(f"{key} {info[key]}" for key in ("exit_code", "signal") if info.get(key) is not None)
        broken.append(f"training failed{_progress(info)}" + (f" ({detail})" if detail else ""))
    elif state == "interrupted":
        unfinished.append(f"training interrupted{_progress(info)}: re-run to resume")
    elif state == "finished" and info.get("mode", "train") == "train" and expected.kind == "train":
        iteration, max_iter = info.get("iteration"), info.get("max_iter")
        if iteration is not None and max_iter is not None and iteration < max_iter:
            unfinished.append(f"run.json says finished but stopped at iteration {iteration}/{max_iter}")
    return unfinished


def _load_files(folder: Path, names: set[str], expected: ExpectedRun, broken: list[str]) -> dict[str, Any]:
    """The result files of a run folder among ``names``, read and checked; a file that cannot be
    read, or is not what it should be, adds its message to ``broken`` instead."""

    def evaluation(path: Path) -> Any:
        return _validate_eval(_read_run_json_file(path), expected)

    def analysis(legacy: bool) -> Any:
        return lambda path: _validate_errors(_read_run_json_file(path), path.name, legacy=legacy)

    readers = {
        _EVAL: evaluation,
        _ERRORS: analysis(legacy=False),
        _LEGACY: analysis(legacy=True),
        layout.TRAINING_METRICS: _read_metrics,
        # Optional (COCO runs when the occlusion subset is there): never required.
        _EVAL_OCC: evaluation,
        _ERRORS_OCC: analysis(legacy=False),
        _LEGACY_OCC: analysis(legacy=True),
    }
    loaded: dict[str, Any] = {}
    for name, reader in readers.items():
        if name not in names:
            continue
        try:
            loaded[name] = reader(folder / name)
        except _BadFile as error:
            broken.append(str(error))
    return loaded


def _take_results(result: RunResult, loaded: dict[str, Any], training_complete: bool) -> None:
    """The metrics.json warning, and the data fields a table may use (only of a complete training)."""
    metrics, skipped = loaded.get(layout.TRAINING_METRICS, (None, []))
    if skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        result.warnings.append(f"metrics.json: skipped unreadable {skipped[0]}{more}")
    if training_complete:
        result.eval = loaded.get(_EVAL)
        result.errors = loaded.get(_ERRORS)
        result.errors_legacy = loaded.get(_LEGACY)
        result.metrics = metrics
        result.eval_occ = loaded.get(_EVAL_OCC)
        result.errors_occ = loaded.get(_ERRORS_OCC)
        result.errors_legacy_occ = loaded.get(_LEGACY_OCC)


def run_log(expected: ExpectedRun) -> str | None:
    """The log of a run's training (or inference) job, where experiments.json names it."""
    return expected.logs.get("train" if expected.kind == "train" else "inference")


def _live_result(expected: ExpectedRun) -> RunResult | None:
    """A run that is training, failed or was interrupted, from the run.json in its work directory
    (OUTPUT_DIR); None when there is none (not started, or a results tree copied elsewhere)."""
    if expected.output_dir is None:
        return None
    info = read_record(Path(expected.output_dir) / RUN_RECORD)
    state = info.get("status") if info else None
    if state not in ("running", "failed", "interrupted"):
        return None
    # No ETA: the README is the same file until a run file changes.
    where = describe_progress(progress(info), eta=False)
    where = f" ({where})" if where else ""
    log = run_log(expected)
    if state == "running":
        return RunResult(expected, "running", [f"training{where}"], info=info)
    if state == "interrupted":
        return RunResult(
            expected, "incomplete", [f"training interrupted{where}: resumes when the workflow runs it again"], info=info
        )
    error = info.get("error") or f"exit code {info.get('exit_code')}"
    return RunResult(
        expected, "failed", [f"training failed{where}: {error}" + (f"; log: {log}" if log else "")], info=info
    )


def _progress(info: dict[str, Any]) -> str:
    iteration, max_iter = info.get("iteration"), info.get("max_iter")
    if iteration is None:
        return ""
    return f" at iteration {iteration}" + (f"/{max_iter}" if max_iter is not None else "")
