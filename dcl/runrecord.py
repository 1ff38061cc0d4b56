"""``run.json``: what a training or evaluation run is, where it came from, and how it went.

The format is in ``docs/design.md`` ("Per-run files"). :class:`RunRecord` rewrites the file
atomically on every change, so a reader never sees half of it, and a resumed run (``--resume``,
same mode) keeps its earlier attempts, start time and wall time. Standard library only.
"""
from __future__ import annotations

import datetime as dt
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from dcl.io import InputError, atomic_write_json, read_json

__all__ = ["RUN_RECORD", "RunRecord", "git_state", "now"]

logger = logging.getLogger("dcl.runrecord")

RUN_RECORD = "run.json"


def now() -> str:
    """The current time, ISO 8601 UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
            "status": "running", "exit_code": None, "signal": None, "mode": fields["mode"],
            **{k: v for k, v in fields.items() if k != "mode"},
            "start_time": previous.get("start_time", started) if previous else started,
            "end_time": None,
            "wall_time_s": float(previous.get("wall_time_s") or 0.0) if previous else 0.0,
            "iteration": iteration,
            "max_iter": fields.get("max_iter"),
            "attempts": list(previous.get("attempts", [])) if previous else [],
        }
        data["attempts"].append({"start_time": started, "end_time": None, "start_iter": iteration,
                                 "end_iter": None, "status": "running", "host": fields.get("host")})
        record = cls(path, data)
        record.write()
        return record

    def write(self) -> None:
        atomic_write_json(self.path, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def start_iteration(self, iteration: int) -> None:
        self.data["iteration"] = iteration
        self.data["attempts"][-1]["start_iter"] = iteration
        self.write()

    def close(self, status: str, exit_code: int, *, iteration: Optional[int] = None,
              signal_name: Optional[str] = None, error: Optional[str] = None) -> None:
        ended = now()
        elapsed = time.monotonic() - self._attempt_start
        attempt = self.data["attempts"][-1]
        attempt.update(end_time=ended, status=status)
        if iteration is not None:
            # Completed iterations never go back: a checkpoint holds at least what was recorded.
            self.data["iteration"] = max(iteration, self.data.get("iteration") or 0)
        attempt["end_iter"] = self.data.get("iteration")
        self.data.update(status=status, exit_code=exit_code, signal=signal_name, end_time=ended,
                         wall_time_s=round(self._previous_wall + elapsed, 3))
        if error is not None:
            self.data["error"] = error
        else:
            self.data.pop("error", None)
        self.write()
