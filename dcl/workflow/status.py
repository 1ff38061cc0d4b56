"""``dcl status``: where every run of a preset stands, while the workflow runs or long after.

One line per run of ``RESULTS_DIR/experiments.json`` (written by ``dcl plan``; an ablation point
that reuses its base experiment's training shares that run's line): its state, progress,
speed, ETA, chunks (attempts), GPU-hours used, the disk its work directory takes (checkpoints),
Slurm job and node, and for a failed run the reason and log.

Where the facts come from:

- ``RESULTS_DIR/runs/{experiment}/seed{seed}/run.json``: a finished run (the workflow copies it
  there when training ends);
- the live ``run.json`` in the run's work directory (``output_dir`` in experiments.json): a run
  that is training, was interrupted (time limit, pre-emption) or failed;
- ``squeue`` when it is on PATH: jobs of the Snakemake Slurm executor, whose ``--comment`` is
  ``rule_{rule}_wildcards_{experiment}_{seed}``, so queued jobs and nodes are known.

On a results tree copied elsewhere (no work directory, no Slurm) finished runs are still shown as
such and the rest as ``missing``. The states are :data:`dcl.runs.STATES` (their meaning is there);
what the results tree alone says comes from :func:`dcl.runs.load_run`, the reader the report uses,
so the two never disagree.

Standard library only, so it answers in well under a second for the paper's 60 runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from dcl import layout
from dcl.io import InputError
from dcl.runs import STATES, ExpectedRun, add_run_arguments, load_experiments, load_run, run_log
from dcl.runrecord import RECORD_STATES, RUN_RECORD, Progress, format_duration, gpu_hours, now, progress, read_record

__all__ = ["STATES", "RunStatus", "SlurmJob", "add_arguments", "collect", "run", "run_status", "squeue_jobs"]

# Snakemake's Slurm executor: --comment rule_{rule}_wildcards_{wildcard values joined by "_"}.
_JOB_RULES = ("train", "inference")
_SQUEUE_TIMEOUT_S = 10
# squeue states of a job that has not started its work yet.
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """A job ``squeue`` lists: id, state (``PENDING``, ``RUNNING``, ...), node list, comment."""

    job_id: str
    state: str
    nodes: str
    comment: str


@dataclasses.dataclass
class RunStatus:
    """One line of ``dcl status``."""

    experiment: str
    seed: int
    state: str
    also: list[str]  # ablation points that are this same run
    iteration: Optional[int] = None
    max_iter: Optional[int] = None
    rate: Optional[float] = None  # iterations per second (current chunk)
    eta_s: Optional[float] = None
    chunks: int = 0
    job_id: Optional[str] = None
    node: Optional[str] = None
    updated_s_ago: Optional[float] = None
    reason: str = ""
    log: Optional[str] = None
    gpu_hours: Optional[float] = None  # used so far, over every attempt
    disk_bytes: Optional[int] = None  # of its work directory (checkpoints), when it is here

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def squeue_jobs(user: Optional[str] = None) -> Optional[list[SlurmJob]]:
    """The user's Slurm jobs, or None when ``squeue`` is not on PATH or does not answer."""
    if shutil.which("squeue") is None:
        return None
    user = user or os.environ.get("USER") or getpass.getuser()
    try:
        done = subprocess.run(
            ["squeue", "--noheader", f"--user={user}", "--format=%i|%T|%N|%k"],
            capture_output=True,
            text=True,
            timeout=_SQUEUE_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    jobs = []
    for line in done.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jobs.append(SlurmJob(*parts))
    return jobs


def _job_comments(expected: ExpectedRun) -> set[str]:
    return {f"rule_{rule}_wildcards_{expected.experiment}_{expected.seed}" for rule in _JOB_RULES}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that id
    return True


def _stale_reason(info: dict, jobs: Optional[Sequence[SlurmJob]]) -> str:
    """Why a record that says ``running`` belongs to no live process ("" when it may be alive)."""
    slurm = info.get("slurm") if isinstance(info.get("slurm"), dict) else None
    if slurm and slurm.get("job_id"):
        if jobs is not None and str(slurm["job_id"]) not in {job.job_id for job in jobs}:
            return f"run.json says running, but Slurm job {slurm['job_id']} has ended (killed without closing it)"
        return ""
    attempts = [a for a in info.get("attempts") or [] if isinstance(a, dict)]
    pid = attempts[-1].get("pid") if attempts else None
    if attempts and attempts[-1].get("host") == socket.gethostname() and pid is not None and not _alive(pid):
        return f"run.json says running, but its process {pid} on this host has ended (killed without closing it)"
    return ""


def _disk_use(folder: Path) -> Optional[int]:
    """Bytes of the files under ``folder`` (None when it is not there)."""
    if not folder.is_dir():
        return None
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile (an old checkpoint)
                pass
    return total


def _status_from_record(
    status: RunStatus,
    info: dict,
    from_results: bool,
    results_dir: Path,
    expected: ExpectedRun,
    jobs: Optional[Sequence[SlurmJob]],
    at: float,
) -> None:
    """Fill ``status`` from a run record: progress, GPU hours, Slurm job and node, and the state
    with its reason. A running run whose job or process is gone is interrupted; a finished one
    whose record is the results folder's (``from_results``) is incomplete or failed where the
    report cannot read all its result files."""
    status.gpu_hours = gpu_hours(info)
    state: Progress = progress(info, at)
    status.iteration, status.max_iter, status.chunks = state.iteration, state.max_iter, state.chunks
    status.updated_s_ago = state.age_s
    slurm = info.get("slurm") if isinstance(info.get("slurm"), dict) else {}
    status.job_id, status.node = slurm.get("job_id"), slurm.get("nodes")
    status.state = info.get("status") if info.get("status") in RECORD_STATES else "failed"
    if status.state == "failed" and info.get("status") != "failed":
        info = {**info, "error": f"run.json has an unknown status {info.get('status')!r}"}
    if status.state == "running":
        status.rate, status.eta_s = state.rate, state.eta_s
        stale = _stale_reason(info, jobs)
        if stale:
            status.state, status.reason, status.rate, status.eta_s = "interrupted", stale, None, None
    elif status.state == "failed":
        status.reason = str(info.get("error") or f"exit code {info.get('exit_code')}")
        status.log = run_log(expected)
    elif status.state == "interrupted":
        signal = info.get("signal")
        status.reason = f"stopped by {signal}" if signal else "stopped"
    elif from_results:
        # Finished only as the report sees it: every result file there and readable.
        folder = load_run(results_dir, expected)
        if folder.status in ("incomplete", "failed"):
            status.state, status.reason = folder.status, folder.reason


def _status_from_job(status: RunStatus, job: SlurmJob) -> None:
    """Update the status of an unfinished run from its Slurm job: its id and node; queued while
    the job waits (unless the run is running), running ("starting") once the job runs before dcl
    train has written its record."""
    status.job_id, status.node = job.job_id, job.nodes or status.node
    if job.state in _WAITING:
        if status.state != "running":
            status.state = "queued"
    elif status.state in ("pending", "missing", "interrupted", "failed"):
        # The job has started (a new chunk, or a retry) and dcl train has not written yet.
        status.state, status.reason, status.log = "running", "starting", None


def run_status(
    results_dir: Path,
    expected: ExpectedRun,
    jobs: Optional[Sequence[SlurmJob]],
    at: Optional[float] = None,
    also: Sequence[str] = (),
) -> RunStatus:
    """The state of one run (see the module docstring).

    Args:
        results_dir: ``results/{preset}``.
        expected: the run, from experiments.json.
        jobs: ``squeue``'s jobs, or None when Slurm cannot be asked (then only run.json counts).
        at: the time to compute ages and ETAs at (default: now).
    """
    at = time.time() if at is None else at
    status = RunStatus(experiment=expected.experiment, seed=expected.seed, state="missing", also=list(also))
    comments = _job_comments(expected)
    job = next((j for j in jobs or () if j.comment in comments), None)

    finished = read_record(results_dir / expected.run_dir / RUN_RECORD)
    live = None
    if expected.output_dir is not None:
        live = read_record(Path(expected.output_dir) / RUN_RECORD)
    info = finished if finished and finished.get("status") == "finished" else live
    if expected.output_dir is not None:
        status.disk_bytes = _disk_use(Path(expected.output_dir))
    if info is not None:
        _status_from_record(status, info, info is finished, results_dir, expected, jobs, at)
    elif expected.kind == "released" and (results_dir / expected.run_dir / f"{layout.EVALUATION}.json").is_file():
        status.state = "finished"  # a released checkpoint evaluated without a run record
    elif expected.output_dir is not None and Path(expected.output_dir).parent.parent.is_dir():
        status.state = "pending"  # the work directory of the workflow is here: not started yet
    if job is not None and status.state != "finished":
        _status_from_job(status, job)
    if status.state == "queued":
        status.node = None  # not placed yet; a node in run.json is a former chunk's
    return status


def collect(
    results_dir: Path, experiments_path: Optional[Path] = None, *, use_slurm: bool = True, at: Optional[float] = None
) -> dict[str, Any]:
    """Everything ``dcl status --json`` prints: preset, time, whether Slurm was asked, the runs
    (one per run folder) and the totals per state."""
    experiments_path = experiments_path or results_dir / layout.EXPERIMENTS
    if not experiments_path.is_file():
        raise InputError(
            f"experiments file not found: {experiments_path} (`dcl plan` writes it; the workflow's "
            "first step), or pass --experiments PATH"
        )
    preset, expected = load_experiments(experiments_path)
    jobs = squeue_jobs() if use_slurm else None
    by_folder: dict[str, list[ExpectedRun]] = {}
    for run_ in expected:
        by_folder.setdefault(run_.run_dir, []).append(run_)
    runs = []
    for members in by_folder.values():
        # A folder shared by several runs is an ablation point that reuses its base experiment's
        # training: the line is the base's (whose name the workflow's jobs carry).
        owner = next((r for r in members if r.group != "ablation"), members[0])
        also = [r.experiment for r in members if r is not owner]
        runs.append(run_status(results_dir, owner, jobs, at, also))
    totals = {state: sum(r.state == state for r in runs) for state in STATES}
    trained = [r for r in runs if r.max_iter]
    return {
        "preset": preset,
        "results_dir": str(results_dir),
        "time": now(),
        "slurm": jobs is not None,
        "runs": [r.as_dict() for r in runs],
        "totals": totals,
        "iterations": {
            "done": sum(min(r.iteration or 0, r.max_iter) for r in trained),
            "total": sum(r.max_iter for r in trained),
        },
        "gpu_hours": sum(r.gpu_hours or 0 for r in runs),
        "disk_bytes": sum(r.disk_bytes or 0 for r in runs),
    }


def _text(report: dict[str, Any]) -> str:
    runs = report["runs"]
    names = [r["experiment"] + (f" (+{len(r['also'])})" if r["also"] else "") for r in runs]
    width = max([len("experiment"), *map(len, names)])
    header = (
        f"{'experiment':{width}s} {'seed':>4s}  {'state':11s} {'iteration':>13s} {'it/s':>6s} {'ETA':>8s} "
        f"{'chunks':>6s} {'GPU-h':>6s} {'disk':>7s}  {'job':10s} node"
    )
    lines = [
        f"dcl status {report['results_dir']} (preset {report['preset']}, {report['time']}"
        + (", with squeue" if report["slurm"] else ", without Slurm")
        + ")",
        header,
    ]
    for name, r in zip(names, runs):
        progress_text = f"{r['iteration']}/{r['max_iter']}" if r["iteration"] is not None and r["max_iter"] else "-"
        rate = f"{r['rate']:.2f}" if r["rate"] else "-"
        lines.append(
            f"{name:{width}s} {r['seed']:>4d}  {r['state']:11s} {progress_text:>13s} {rate:>6s} "
            f"{format_duration(r['eta_s']):>8s} {r['chunks'] or '-':>6} {_hours(r['gpu_hours']):>6s} "
            f"{_size(r['disk_bytes']):>7s}  {r['job_id'] or '-':10s} "
            f"{r['node'] or '-'}"
        )
        if r["state"] in ("failed", "interrupted", "incomplete") and r["reason"] or r["log"]:
            lines.append(f"{'':{width}s}       {r['reason']}" + (f"; log: {r['log']}" if r["log"] else ""))
    totals = report["totals"]
    line = f"{len(runs)} runs: " + ", ".join(f"{n} {state}" for state, n in totals.items() if n)
    iterations = report["iterations"]
    if iterations["total"]:
        line += f"; {iterations['done']}/{iterations['total']} iterations ({100 * iterations['done'] / iterations['total']:.0f}%)"
    etas = [r["eta_s"] for r in runs if r["eta_s"] is not None]
    if etas:
        line += f"; running runs done in {format_duration(max(etas))}"
    line += f"; {_hours(report['gpu_hours'])} GPU-hours used; work directories {_size(report['disk_bytes'])}"
    lines.append(line)
    return "\n".join(lines)


def _hours(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _size(value: Optional[int]) -> str:
    """``1.2 GB``, ``350 MB``, ``12 kB``; ``-`` for None."""
    if value is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}" if value < 100 * scale else f"{value / scale:.0f} {unit}"
    return f"{value / 1e3:.0f} kB"


def _default_results_dir() -> Path:
    found = sorted(Path("results").glob(f"*/{layout.EXPERIMENTS}"))
    if len(found) == 1:
        return found[0].parent
    if not found:
        raise InputError("no results/<preset>/experiments.json here: pass RESULTS_DIR (e.g. results/paper)")
    raise InputError("several presets here, pass one: " + ", ".join(str(p.parent) for p in found))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "results/{preset} (default: the only results/*/ with an experiments.json)", optional=True)
    parser.add_argument(
        "--watch",
        metavar="SECONDS",
        type=float,
        nargs="?",
        const=60.0,
        default=None,
        help="refresh every SECONDS (default 60) until Ctrl-C (put it after RESULTS_DIR)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (with --watch: one object per line)")
    parser.add_argument(
        "--no-slurm", dest="use_slurm", action="store_false", help="do not ask squeue (only run.json files count)"
    )


def run(args: argparse.Namespace) -> int:
    results_dir = args.results_dir if args.results_dir is not None else _default_results_dir()
    if args.watch is not None and args.watch <= 0:
        raise InputError(f"--watch {args.watch:g}: the refresh interval must be positive")
    clear = args.watch is not None and not args.json and sys.stdout.isatty()
    try:
        while True:
            report = collect(results_dir, args.experiments, use_slurm=args.use_slurm)
            text = (
                json.dumps(
                    report,
                    separators=(",", ":") if args.watch is not None else None,
                    indent=None if args.watch is not None else 2,
                )
                if args.json
                else _text(report)
            )
            print(("\033[H\033[J" if clear else "") + text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
