"""Benchmark ``dcl status`` on the paper's matrix: target under 1 s for its ~60 runs.

    .venv/bin/python benchmarks/bench_status.py [--repeat 5]

Builds, in a temporary working directory, ``results/paper/experiments.json`` from
``configs/paper.yaml`` (``dcl.workflow.experiments.Plan``) and one synthetic run per run folder, laid out
as the workflow leaves them mid-way: a third finished (run.json in the results tree, with
metrics.json and eval.json beside it), a third training (live run.json in the work directory,
several chunks), the rest failed, interrupted or not started. Then times the whole command,
``python -m dcl status results/paper`` as a user runs it (interpreter start-up and imports
included; without Slurm, whose answer time is the cluster's), best of ``--repeat``, and the
in-process :func:`dcl.workflow.status.collect` alone. Prints each time and its ratio to the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
sys.path.insert(0, str(REPO))


def iso(seconds_ago: float) -> str:
    moment = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_ago)
    return moment.isoformat(timespec="seconds")


def run_json(state: str, seed: int, iteration: int, chunks: int) -> dict:
    """A run.json as large as a real one (provenance, versions, attempts)."""
    attempts = [
        {
            "start_time": iso(3600 * (chunks - i)),
            "end_time": None if i == chunks - 1 else iso(3600 * (chunks - i - 1)),
            "start_iter": 4000 * i,
            "end_iter": None if i == chunks - 1 else 4000 * (i + 1),
            "status": state if i == chunks - 1 else "interrupted",
            "host": f"gpu{i:02d}",
            "pid": 100 + i,
            "slurm_job_id": str(1000 + i),
            "train_start_time": iso(3600 * (chunks - i) - 60),
        }
        for i in range(chunks)
    ]
    return {
        "status": state,
        "exit_code": None if state == "running" else 0,
        "signal": None,
        "mode": "train",
        "command": ["dcl", "train", "--num-gpus", "4", "--config-file", "configs/x.yaml", "--resume"]
        + ["KEY", "VALUE"] * 20,
        "cwd": "/project",
        "config_file": "configs/x.yaml",
        "overrides": ["KEY", "VALUE"] * 20,
        "seed": seed,
        "output_dir": "/project/work_dirs/paper/x/seed0",
        "git_commit": "0" * 40,
        "git_dirty": False,
        "host": "gpu01",
        "slurm": {"job_id": "1000", "nodes": "gpu01", "ntasks": 1},
        "gpus": {"count": 4, "type": "NVIDIA A100"},
        "versions": {"torch": "2.4", "detectron2": "0.6", "python": "3.11"},
        "compat_shims": ["a", "b", "c"],
        "start_time": iso(7200),
        "end_time": None,
        "wall_time_s": 3600.0,
        "iteration": iteration,
        "max_iter": 24000,
        "attempts": attempts,
        "update_time": iso(30),
        **({"error": "FloatingPointError: Loss became infinite or NaN at iteration=2"} if state == "failed" else {}),
    }


def build(root: Path) -> int:
    from dcl.workflow.experiments import Plan, read_config_file

    plan = Plan(read_config_file(REPO / "configs" / "paper.yaml"), repo_root=REPO, working_dir=root)
    document = plan.document()
    results = root / plan.results
    results.mkdir(parents=True)
    (results / "experiments.json").write_text(json.dumps(document))
    folders = list(dict.fromkeys((r["run_dir"], r["output_dir"], r["seed"]) for r in document["runs"]))
    for index, (run_dir, output_dir, seed) in enumerate(folders):
        kind = index % 6
        if kind in (0, 1):
            folder = results / run_dir
            folder.mkdir(parents=True)
            (folder / "run.json").write_text(json.dumps(run_json("finished", seed, 24000, 6)))
            (folder / "metrics.json").write_text(
                "".join(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n" for i in range(19, 24000, 20))
            )
            (folder / "eval.json").write_text(json.dumps({"segm": {"AP": 35.0}}))
        elif kind < 5 or index % 12 == 5:
            live = results / output_dir
            live.mkdir(parents=True)
            state = {2: "running", 3: "running", 4: "interrupted", 5: "failed"}[kind]
            (live / "run.json").write_text(json.dumps(run_json(state, seed, 9000 + index, 1 + index % 5)))
    return len(folders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = build(root)
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = [sys.executable, "-m", "dcl", "status", "results/paper", "--no-slurm"]
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"dcl status failed:\n{done.stderr}")
        from dcl.workflow.status import collect

        os.chdir(root)
        start = time.perf_counter()
        report = collect(Path("results/paper"), use_slurm=False)
        in_process = time.perf_counter() - start
    print(done.stdout.splitlines()[-1])
    print(
        f"dcl status, {folders} run folders ({len(report['runs'])} lines): whole command {min(times):.3f} s "
        f"(best of {args.repeat}), ratio to the {TARGET_S:.0f} s target {min(times) / TARGET_S:.2f}; "
        f"reading the runs in-process {in_process * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
