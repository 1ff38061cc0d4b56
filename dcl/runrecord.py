"""``run.json``: what a training or evaluation run is, where it came from, and how it went.

The format is in ``docs/design.md`` ("Per-run files"). :class:`RunRecord` rewrites the file
atomically on every change, so a reader never sees half of it, and a resumed run (``--resume``,
same mode) keeps its earlier attempts, start time and wall time. Every write of ``dcl train``
goes through this module: a new record's fields (:func:`run_fields`), where it lives
(:func:`record_path`), one a dead worker left open (:func:`mark_failed_if_running`).
:func:`progress` reads the progress of a run back (iteration, speed, ETA, chunks) for
``dcl status`` and ``dcl report``.
Standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from dcl.io import InputError, atomic_write_json, read_json
from dcl.layout import INFERENCE_DIR, RUN_RECORD

# What run.json's `status` can say (a subset of dcl.runs.STATES).
RECORD_STATES = ("running", "finished", "failed", "interrupted")

__all__ = [
    "RECORD_STATES",
    "RUN_RECORD",
    "Progress",
    "RunRecord",
    "attempt_count",
    "describe_progress",
    "format_duration",
    "git_state",
    "gpu_hours",
    "mark_failed_if_running",
    "now",
    "parse_time",
    "progress",
    "read_record",
    "record_path",
    "run_fields",
]

logger = logging.getLogger("dcl.runrecord")


def now() -> str:
    """The current time, ISO 8601 UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def parse_time(text: object) -> Optional[float]:
    """A time :func:`now` wrote, as seconds since the epoch; None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def git_state() -> tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the checkout this ``dcl`` package runs from, or (None, None)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo:
        return None, None  # an installed copy, not a checkout (or one nested in another repo)
    status = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD"), (None if status is None else bool(status))


def run_fields(
    *,
    eval_only: bool,
    command: list[str],
    config_file: str,
    overrides: list[str],
    seed: int,
    output_dir: str,
    max_iter: int,
    on_gpu: bool,
    num_gpus: int,
    distributed: dict,
    weights: dict,
    slurm: Optional[dict],
    environment: dict,
) -> dict:
    """The fields of a new run's record (:meth:`RunRecord.begin`): ``num_gpus`` workers per
    machine, ``distributed`` a :class:`dcl.slurm.DistributedLayout` as a dict, ``environment``
    :func:`dcl.info.environment_info`."""
    commit, dirty = git_state()
    gpus = {
        "count": num_gpus * distributed["num_machines"] if on_gpu else 0,
        "type": environment["cuda_devices"][0] if on_gpu and environment["cuda_devices"] else None,
    }
    return {
        "mode": "eval-only" if eval_only else "train",
        "command": command,
        "cwd": os.getcwd(),
        "config_file": config_file,
        "overrides": overrides,
        "seed": seed,
        "output_dir": str(Path(output_dir).resolve()),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "slurm": slurm,
        "gpus": gpus,
        "versions": {**environment["versions"], "detectron2": environment["detectron2"]["version"]},
        "compat_shims": environment["compat_shims"],
        "iteration": None if eval_only else 0,
        "max_iter": None if eval_only else max_iter,
        "distributed": distributed | {"num_gpus_per_machine": num_gpus},
        "weights": weights,
    }


def record_path(output_dir: Path, eval_only: bool) -> Path:
    """Where a run in ``output_dir`` keeps its record: ``run.json``, except for an evaluation
    beside a training's record, whose own goes to ``inference/``."""
    path = output_dir / RUN_RECORD
    if eval_only and path.is_file():
        try:
            if read_json(path, "run record").get("mode") == "train":
                return output_dir / INFERENCE_DIR / RUN_RECORD
        except InputError:
            pass
    return path


def attempt_count(path: Path) -> int:
    """How many attempts the record at ``path`` holds.

    Raises:
        InputError: the record is missing or unreadable.
    """
    return len(read_json(path, "run record").get("attempts", []))


def mark_failed_if_running(path: Path, exit_code: int, reason: str) -> None:
    """A process died without closing the record at ``path`` (killed, crashed hard): record the
    failure, unless the record says how the run ended."""
    if not path.is_file():
        return
    try:
        data = read_json(path, "run record")
    except InputError:
        return
    if data.get("status") == "running":
        data.update(status="failed", exit_code=exit_code, end_time=now(), error=reason)
        if data.get("attempts"):
            data["attempts"][-1].update(end_time=data["end_time"], status="failed")
        atomic_write_json(path, data)


class RunRecord:
    """``run.json``: provenance and state of a run, rewritten atomically on every change.

    A resumed run (same mode, ``--resume``) keeps the earlier attempts, start time and wall time.
    """

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data
        self._attempt_start = time.monotonic()
        self._previous_wall = float(data.get("wall_time_s") or 0.0)

    @classmethod
    def begin(cls, path: Path, *, resume: bool, fields: dict) -> "RunRecord":
        previous = None
        if resume and path.is_file():
            try:
                previous = read_json(path, "run record")
            except InputError as error:
                logger.warning("ignoring unreadable %s: %s", path, error)
            if previous is not None and previous.get("mode") != fields["mode"]:
                previous = None
        if previous and previous.get("attempts") and previous["attempts"][-1].get("status") == "running":
            # Its process ended without closing the record (SIGKILL, out of memory, a lost node).
            logger.warning("%s: the previous attempt ended without a record (killed?); marking it lost", path)
            previous["attempts"][-1].update(status="lost", end_iter=previous.get("iteration"))
        started = now()
        iteration = fields.get("iteration")
        if previous and isinstance(previous.get("iteration"), int) and previous["iteration"] > (iteration or 0):
            # Resuming: until the checkpoint is loaded, the progress is what the last attempt recorded
            # (an attempt stopped before loading it must not reset the count to 0).
            iteration = previous["iteration"]
        data = {
            "status": "running",
            "exit_code": None,
            "signal": None,
            "mode": fields["mode"],
            **{k: v for k, v in fields.items() if k != "mode"},
            "start_time": previous.get("start_time", started) if previous else started,
            "end_time": None,
            "wall_time_s": float(previous.get("wall_time_s") or 0.0) if previous else 0.0,
            "iteration": iteration,
            "max_iter": fields.get("max_iter"),
            "attempts": list(previous.get("attempts", [])) if previous else [],
        }
        slurm = fields.get("slurm") or {}
        data["attempts"].append(
            {
                "start_time": started,
                "end_time": None,
                "start_iter": iteration,
                "end_iter": None,
                "status": "running",
                "host": fields.get("host"),
                "pid": os.getpid(),
                "slurm_job_id": slurm.get("job_id"),
                "train_start_time": None,
            }
        )
        record = cls(path, data)
        record.write()
        return record

    @property
    def status(self) -> str:
        return self.data["status"]

    def write(self) -> None:
        # The time of the last progress update: with the attempt's start iteration and time, the
        # speed of the run; an old one on a "running" record means a process that died silently.
        self.data["update_time"] = now()
        atomic_write_json(self.path, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def start_iteration(self, iteration: int) -> None:
        """The attempt starts training at ``iteration`` (the checkpoint it resumed from): also
        where a lost attempt before it ended, as far as anything it did counts."""
        self.data["iteration"] = iteration
        attempts = self.data["attempts"]
        attempts[-1].update(start_iter=iteration, train_start_time=now())
        if len(attempts) > 1 and attempts[-2].get("status") == "lost":
            attempts[-2]["end_iter"] = iteration
        self.write()

    def close(
        self,
        status: str,
        exit_code: int,
        *,
        iteration: Optional[int] = None,
        signal_name: Optional[str] = None,
        error: Optional[str] = None,
    ) -> None:
        ended = now()
        elapsed = time.monotonic() - self._attempt_start
        attempt = self.data["attempts"][-1]
        attempt.update(end_time=ended, status=status)
        if iteration is not None:
            # Completed iterations never go back: a checkpoint holds at least what was recorded.
            self.data["iteration"] = max(iteration, self.data.get("iteration") or 0)
        attempt["end_iter"] = self.data.get("iteration")
        self.data.update(
            status=status,
            exit_code=exit_code,
            signal=signal_name,
            end_time=ended,
            wall_time_s=round(self._previous_wall + elapsed, 3),
        )
        if error is not None:
            self.data["error"] = error
        else:
            self.data.pop("error", None)
        self.write()


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a run is, read from its ``run.json``.

    ``rate`` (iterations per second) is the current attempt's: iterations since its checkpoint was
    loaded over the time since then, to the last update (periodic evaluations included, so the
    ETA includes them too); None before two progress updates. ``eta_s`` is None without a rate.
    ``age_s`` is the time since the last update, at ``at``.
    """

    status: Optional[str]
    iteration: Optional[int]
    max_iter: Optional[int]
    chunks: int
    rate: Optional[float]
    eta_s: Optional[float]
    age_s: Optional[float]


def progress(data: dict, at: Optional[float] = None) -> Progress:
    """The :class:`Progress` of a run record (``run.json`` as a dict; tolerant of missing fields,
    such as in records written before ``update_time`` existed)."""
    at = time.time() if at is None else at
    iteration, max_iter = data.get("iteration"), data.get("max_iter")
    iteration = iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else None
    max_iter = max_iter if isinstance(max_iter, int) and not isinstance(max_iter, bool) else None
    attempts = [a for a in data.get("attempts") or [] if isinstance(a, dict)]
    updated = parse_time(data.get("update_time"))
    rate = eta = None
    if attempts and iteration is not None:
        last = attempts[-1]
        started, first = parse_time(last.get("train_start_time")), last.get("start_iter")
        if (
            started is not None
            and updated is not None
            and isinstance(first, int)
            and updated > started
            and iteration > first
        ):
            rate = (iteration - first) / (updated - started)
    if rate and max_iter is not None and data.get("status") == "running":
        # From the last update: the iterations done since then are not known yet.
        eta = max(0.0, (max_iter - iteration) / rate - max(0.0, at - updated))
    return Progress(
        status=data.get("status"),
        iteration=iteration,
        max_iter=max_iter,
        chunks=len(attempts),
        rate=rate,
        eta_s=eta,
        age_s=None if updated is None else max(0.0, at - updated),
    )


def read_record(path: Path) -> Optional[dict]:
    """A ``run.json`` as a dict, or None when it is absent or unreadable (a reader of a live run
    must not fail: the file is replaced atomically, but may be from an older, broken version)."""
    try:
        data = read_json(path, "run record")
    except (InputError, OSError):
        return None
    return data if isinstance(data, dict) else None


def gpu_hours(info: dict) -> Optional[float]:
    """The GPU-hours a run used: its wall time over every attempt times its GPUs (0 on the CPU);
    None when the record does not say."""
    wall = info.get("wall_time_s")
    count = info.get("gpus", {}).get("count") if isinstance(info.get("gpus"), dict) else None
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or type(count) is not int:
        return None
    return wall * count / 3600


def format_duration(seconds: Optional[float], missing: str = "-") -> str:
    """``H:MM:SS`` (``26:07:00`` past a day), the one duration format of ``dcl status`` and the
    report's tables; ``missing`` for None."""
    if seconds is None:
        return missing
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def describe_progress(state: Progress, eta: bool = True) -> str:
    """``iteration 120/160, 1.52 it/s, ETA 0:00:26, chunk 2`` (the parts that are known; speed and
    ETA only of a running run; ``eta=False``: nothing that depends on the current time)."""
    parts = []
    if state.iteration is not None:
        parts.append(f"iteration {state.iteration}" + (f"/{state.max_iter}" if state.max_iter is not None else ""))
    if state.rate and state.status == "running":
        parts.append(f"{state.rate:.2f} it/s")
    if eta and state.eta_s is not None:
        parts.append(f"ETA {format_duration(state.eta_s)}")
    if state.chunks > 1:
        parts.append(f"chunk {state.chunks}")
    return ", ".join(parts)
