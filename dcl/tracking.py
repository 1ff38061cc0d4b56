"""Experiment tracking for ``dcl train`` and ``dcl report``: MLflow or Weights & Biases, optional
and off by default. Shared by :mod:`dcl.training` and :mod:`dcl.report`: no torch, no detectron2.

``dcl train --tracking {mlflow,wandb}`` logs, from the main process only:

- every scalar detectron2 puts into its ``EventStorage`` (losses, ``lr``, timings, and the
  evaluation results the EvalHook stores: ``segm/AP``, ``bbox/AP50``, ``cityscapes/AP``, ...),
  through :class:`dcl.training.engine.TrackingWriter`, a detectron2 ``EventWriter`` beside
  ``metrics.json``'s ``JSONWriter`` that selects exactly what that writer writes
  (:func:`latest_new_scalars`: the same smoothing, the same iterations), so the tracker's numbers
  are ``metrics.json``'s; the step is the iteration;
- the merged detectron2 config, flattened (``SOLVER.BASE_LR``: params in MLflow, the run config in
  W&B) and as the ``config.yaml`` file;
- tags: the run record's fields (seed, git commit, config file, output dir, host, Slurm job) and
  the ``--tracking-tag KEY=VALUE`` ones (the workflow adds experiment, method, model, dataset,
  preset);
- for ``--eval-only``: the evaluation results, at step 0.

``dcl report --tracking ...`` logs the files it wrote (tables, figures, README, document) to a new
run named ``report`` (:func:`log_report`).

A resumed training (``--resume``, e.g. the next Slurm chunk) continues the same tracker run: its id
is kept in ``tracking.json`` beside ``run.json``. The run ends FINISHED, FAILED or (interrupted,
to be resumed) KILLED / W&B exit code 75.

Offline compute nodes: W&B with ``--tracking-offline`` writes its run files under
``<OUTPUT_DIR>/wandb/`` (``WANDB_MODE=offline``); sync them from the login node with
``wandb sync <OUTPUT_DIR>/wandb/offline-run-*`` (README, "Experiment tracking"). MLflow writes to
``--tracking-uri``: a local SQLite file (``sqlite:///path/mlflow.db``, shared by concurrent runs)
or a tracking server (``http://host:5000``); default MLflow's own (``$MLFLOW_TRACKING_URI``, else
``./mlflow.db``).

The libraries are optional extras (``pip install -e '.[mlflow]'`` / ``'.[wandb]'``) and imported
only here, only when tracking is on. A tracker that cannot start stops ``dcl train`` at once with a
one-line :class:`~dcl.io.InputError`; a failure while logging is a warning, and the run goes on
untracked (a training is worth more than its curves).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from dcl.io import InputError, atomic_write_json, read_json

__all__ = [
    "BACKENDS",
    "TRACKING_STATE",
    "TrackingOptions",
    "Tracker",
    "add_arguments",
    "check_available",
    "command_words",
    "flatten_config",
    "latest_new_scalars",
    "options_from_args",
    "record_tags",
    "start",
]

logger = logging.getLogger("dcl.tracking")

BACKENDS = ("mlflow", "wandb")
TRACKING_STATE = "tracking.json"  # beside run.json: which tracker run this run logs to
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # pyproject.toml's optional dependencies
WINDOW = 20  # detectron2's JSONWriter smoothing window (DefaultTrainer's default writers)
STATUS = {"finished", "failed", "interrupted"}


# ----------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class TrackingOptions:
    """What ``--tracking*`` asked for."""

    backend: str
    project: str = "dcl"
    uri: Optional[str] = None
    offline: bool = False
    name: Optional[str] = None
    tags: tuple[tuple[str, str], ...] = ()


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser, report: bool = False) -> None:
    """``dcl train``'s tracking options (all off by default); ``report``: ``dcl report``'s, which
    also take ``--tracking-dir``."""
    group = parser.add_argument_group("experiment tracking (optional; README, 'Experiment tracking')")
    group.add_argument(
        "--tracking",
        choices=BACKENDS,
        default=None,
        help="log the tables and figures written"
        if report
        else "log scalars, config and tags to MLflow or Weights & Biases (main process only)",
    )
    if report:
        group.add_argument(
            "--tracking-dir",
            type=Path,
            default=Path("."),
            metavar="DIR",
            help="W&B: where its run files go, in DIR/wandb (default: the working directory)",
        )
    group.add_argument(
        "--tracking-project",
        default=None,
        metavar="NAME",
        help="W&B project / MLflow experiment (default: dcl)",
    )
    group.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI: sqlite:///path/mlflow.db or http://host:port "
        "(default: $MLFLOW_TRACKING_URI, else MLflow's default ./mlflow.db)",
    )
    group.add_argument(
        "--tracking-offline",
        action="store_true",
        help="W&B: write the run files locally, without network (dcl train: in OUTPUT_DIR/wandb); "
        "wandb sync them later",
    )
    group.add_argument("--tracking-name", default=None, metavar="NAME", help="the tracker run's name")
    group.add_argument(
        "--tracking-tag",
        action="append",
        type=_tag,
        default=None,
        metavar="KEY=VALUE",
        help="a tag of the tracker run (repeatable)",
    )


def options_from_args(args: argparse.Namespace) -> Optional[TrackingOptions]:
    """The tracking options of a parsed ``dcl train`` command; None when tracking is off.

    Raises:
        InputError: tracking options without ``--tracking``, or one the backend does not take.
    """
    backend = getattr(args, "tracking", None)
    given = [
        flag
        for flag in ("tracking_project", "tracking_uri", "tracking_offline", "tracking_name", "tracking_tag")
        if getattr(args, flag, None)
    ]
    if backend is None:
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --tracking mlflow or --tracking wandb")
        return None
    if backend == "wandb" and args.tracking_uri:
        raise InputError("--tracking-uri is MLflow's; for a W&B server set WANDB_BASE_URL")
    if backend == "mlflow" and args.tracking_offline:
        raise InputError(
            "--tracking-offline is W&B's; MLflow without network logs to a local store: "
            "--tracking-uri sqlite:///path/mlflow.db"
        )
    return TrackingOptions(
        backend=backend,
        project=args.tracking_project or "dcl",
        uri=args.tracking_uri,
        offline=bool(args.tracking_offline),
        name=args.tracking_name,
        tags=tuple(args.tracking_tag or ()),
    )


def command_words(options: Optional[TrackingOptions]) -> list[str]:
    """The options as ``dcl train`` arguments (``run.json``'s recorded command); [] when off."""
    if options is None:
        return []
    words = ["--tracking", options.backend]
    if options.project != "dcl":
        words += ["--tracking-project", options.project]
    if options.uri:
        words += ["--tracking-uri", options.uri]
    if options.offline:
        words += ["--tracking-offline"]
    if options.name:
        words += ["--tracking-name", options.name]
    for key, value in options.tags:
        words += ["--tracking-tag", f"{key}={value}"]
    return words


def check_available(backend: str) -> None:
    """Import the backend's library now (in the launching process): a missing one is a one-line
    error before any worker starts."""
    module = "mlflow" if backend == "mlflow" else "wandb"
    try:
        __import__(module)
    except ImportError as error:
        raise InputError(
            f"--tracking {backend}: cannot import {module} ({error}); install it with "
            f"pip install -e '.[{EXTRAS[backend]}]'"
        ) from None


# ----------------------------------------------------------------------------- what is logged
def flatten_config(cfg: Any, prefix: str = "") -> dict[str, str]:
    """A detectron2 config (nested mappings) as ``{"SOLVER.BASE_LR": "0.02", ...}``, sorted."""
    flat: dict[str, str] = {}
    for key in sorted(cfg):
        value = cfg[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def _plain_config(cfg: Any) -> Any:
    if isinstance(cfg, dict):
        return {str(k): _plain_config(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain_config(v) for v in cfg]
    return cfg


def record_tags(fields: dict) -> dict[str, str]:
    """Tags from a run record's fields (:func:`dcl.runrecord.run_fields`)."""
    slurm = fields.get("slurm") or {}
    tags = {
        "mode": fields.get("mode"),
        "seed": fields.get("seed"),
        "git_commit": fields.get("git_commit"),
        "git_dirty": fields.get("git_dirty"),
        "config_file": fields.get("config_file"),
        "output_dir": fields.get("output_dir"),
        "host": fields.get("host"),
        "slurm_job_id": slurm.get("job_id") if isinstance(slurm, dict) else None,
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- trackers
class Tracker:
    """One tracker run. Logging failures are warnings, after which the tracker stays quiet."""

    backend = ""

    def __init__(self) -> None:
        self.broken = False
        self.run_id = ""

    # the backend's part
    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _log_file(self, path: Path, folder: str) -> None:
        raise NotImplementedError

    def _finish(self, status: str) -> None:
        raise NotImplementedError

    # guarded calls
    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        if self.broken:
            yield
            return
        try:
            yield
        except Exception as error:  # the training goes on untracked
            self.broken = True
            logger.warning(
                "%s tracking: %s failed (%s: %s); not logging any more", self.backend, what, type(error).__name__, error
            )

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {key: number for key, value in metrics.items() if (number := _number(value)) is not None}
        if numbers and not self.broken:
            with self._guard("logging metrics"):
                self._log_metrics(numbers, int(step))

    def log_file(self, path: Path, base: Optional[Path] = None) -> None:
        """Log a file (an MLflow artifact, a W&B run file), under its folder relative to ``base``."""
        path = Path(path)
        folder = path.parent.relative_to(base).as_posix() if base is not None else "."
        if path.is_file() and not self.broken:
            with self._guard(f"logging {path.name}"):
                self._log_file(path, "" if folder == "." else folder)

    def finish(self, status: str) -> None:
        """End the run: ``finished``, ``failed`` or ``interrupted`` (to be resumed). Never raises."""
        assert status in STATUS, status
        try:
            self._finish(status)
        except Exception as error:
            logger.warning("%s tracking: ending the run failed (%s: %s)", self.backend, type(error).__name__, error)


_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class MlflowTracker(Tracker):
    backend = "mlflow"
    _STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, options: TrackingOptions, state: Optional[dict], tags: dict[str, str], config: dict):
        super().__init__()
        # An unreachable server: a one-line error in about a minute, not MLflow's minutes of
        # retries (7, doubling from 2 s); the environment wins.
        for variable, value in _MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        import mlflow
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        uri = options.uri or mlflow.get_tracking_uri()
        self.uri = uri
        with _store_lock(uri):  # one process creates a new SQLite store and the experiment
            self.client = client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(options.project)
            if experiment is None:
                experiment_id = client.create_experiment(options.project, artifact_location=_artifact_location(uri))
            else:
                experiment_id = experiment.experiment_id
        run = None
        if state is not None:
            try:
                run = client.get_run(state["run_id"])
            except mlflow.exceptions.MlflowException:
                logger.warning(
                    "mlflow tracking: run %s of %s is not in %s: starting a new one",
                    state["run_id"],
                    TRACKING_STATE,
                    uri,
                )
        if run is None:
            run = client.create_run(experiment_id, run_name=options.name, tags=tags)
            self.resumed = False
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            self.resumed = True
        self.run_id = run.info.run_id
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        known = dict(run.data.params)
        params = {k: v[:6000] for k, v in flatten_config(config).items()}
        new = [Param(k, v) for k, v in params.items() if k not in known]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=new[i : i + 100])
        changed = sorted(k for k, v in params.items() if k in known and known[k] != v)
        if changed:  # MLflow params cannot change: the resumed run's differences become tags
            logger.warning(
                "mlflow tracking: config changed since the run began: %s (logged as tags)", ", ".join(changed)
            )
            client.log_batch(self.run_id, tags=[RunTag(f"changed.{k}", params[k]) for k in changed])

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = [Metric(key, value, stamp, step) for key, value in metrics.items()]
        for i in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[i : i + 1000])

    def _log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def _finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self._STATUS[status])

    def state(self) -> dict:
        return {"backend": self.backend, "uri": self.uri, "run_id": self.run_id}


def _sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def _artifact_location(uri: str) -> Optional[str]:
    """A local store keeps its artifacts beside the database (MLflow's default is the cwd)."""
    path = _sqlite_path(uri)
    return (path.resolve().parent / "mlartifacts").as_uri() if path is not None else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive lock beside it: MLflow creating the same new database (its
    schema migrations) or experiment from two processes at once fails."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # waits: creating a store takes seconds
        yield
    finally:
        os.close(fd)


class WandbTracker(Tracker):
    backend = "wandb"
    _EXIT_CODE = {"finished": 0, "failed": 1, "interrupted": 75}

    def __init__(
        self, options: TrackingOptions, state: Optional[dict], tags: dict[str, str], config: dict, run_dir: Path
    ):
        super().__init__()
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False)
        run_id = state["run_id"] if state is not None else None
        self.run = wandb.init(
            project=options.project,
            name=options.name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(run_dir),
            mode="offline" if options.offline else None,
            config={"config": _plain_config(config), "tags": tags},
            tags=[f"{key}:{value}"[:64] for key, value in tags.items()],
            settings=settings,
        )
        self.resumed = run_id is not None
        self.run_id = self.run.id
        self.offline = options.offline
        if self.resumed:
            self.run.config.update({"config": _plain_config(config), "tags": tags}, allow_val_change=True)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def _log_file(self, path: Path, folder: str) -> None:
        base = path.parent.parents[len(Path(folder).parts) - 1] if folder else path.parent
        self.run.save(str(path), base_path=str(base), policy="now")

    def _finish(self, status: str) -> None:
        if status == "interrupted":
            with contextlib.suppress(Exception):
                self.run.mark_preempting()
        self.run.finish(exit_code=self._EXIT_CODE[status])

    def state(self) -> dict:
        return {"backend": self.backend, "run_id": self.run_id, "offline": self.offline}


def start(
    options: TrackingOptions,
    folder: Path,
    *,
    resume: bool,
    tags: dict[str, str],
    config: Any,
    remember: bool = True,
) -> Tracker:
    """Start (``resume``: continue, if ``folder/tracking.json`` names one) the tracker run of the
    run whose ``run.json`` is in ``folder``; log its tags and config and (``remember``) keep its id
    there. W&B writes its run files to ``folder/wandb``.

    Raises:
        InputError: the library failed to start the run (one line, with its reason).
    """
    state_file = folder / TRACKING_STATE
    state = None
    if resume and state_file.is_file():
        try:
            state = read_json(state_file, "tracking state")
        except InputError as error:
            logger.warning("%s; starting a new tracker run", error)
        if state is not None and state.get("backend") != options.backend:
            state = None
        if state is not None and options.uri and state.get("uri") != options.uri:
            state = None  # another MLflow store
    all_tags = {**tags, **dict(options.tags)}
    try:
        if options.backend == "mlflow":
            tracker: Tracker = MlflowTracker(options, state, all_tags, config)
        else:
            tracker = WandbTracker(options, state, all_tags, config, folder)
    except InputError:
        raise
    except Exception as error:
        reason = " ".join(str(error).split())[:500] or type(error).__name__
        raise InputError(f"--tracking {options.backend}: cannot start the tracker run: {reason}") from None
    if remember:
        atomic_write_json(state_file, tracker.state())
    logger.info(
        "%s tracking: %s run %s%s",
        options.backend,
        "resumed" if tracker.resumed else "started",
        tracker.run_id,
        f" ({options.uri or getattr(tracker, 'uri', '')})" if options.backend == "mlflow" else "",
    )
    return tracker


def log_report(options: TrackingOptions, files: list[Path], results_dir: Path, folder: Path) -> str:
    """``dcl report --tracking``: a new tracker run (default name ``report``) holding the written
    tables, figures, README and document as files, under their folders in ``results_dir``; its id."""
    if options.name is None:
        options = dataclasses.replace(options, name="report")
    tracker = start(options, folder, resume=False, tags={"kind": "report"}, config={}, remember=False)
    status = "failed"
    try:
        for path in files:
            tracker.log_file(path, results_dir)
        status = "finished" if not tracker.broken else "failed"
    finally:
        tracker.finish(status)
    return tracker.run_id


# ----------------------------------------------------------------------------- the writer's selection
def latest_new_scalars(storage: Any, last_write: int) -> dict[int, dict[str, float]]:
    """What detectron2's ``JSONWriter`` writes now from an ``EventStorage``: the latest value
    (median-smoothed where the hint says so) of every scalar put after iteration ``last_write``,
    by iteration. :class:`dcl.training.engine.TrackingWriter` logs exactly this."""
    by_iteration: dict[int, dict[str, float]] = {}
    for key, (value, iteration) in storage.latest_with_smoothing_hint(WINDOW).items():
        if iteration > last_write:
            by_iteration.setdefault(int(iteration), {})[key] = value
    return by_iteration
