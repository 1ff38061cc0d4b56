"""Benchmark the Snakemake workflow: planning the paper matrix, and the toy run of the whole DAG.

    .venv/bin/python benchmarks/bench_workflow.py            # both (the toy run takes minutes)
    .venv/bin/python benchmarks/bench_workflow.py --plan-only

1. `snakemake -n --profile slurm` of the full paper matrix (~60 training runs, ~260 jobs), without
   data, in a fresh working directory: best wall time of ``--repeat`` runs against the 5 s target.
2. The toy preset's whole DAG (toy data, 11 trainings of the default schedule, evaluation, both
   error analyses, report) with the local executor on ``--cores`` cores, in a fresh working
   directory, against the 10 minute target. Prints the time per rule from Snakemake's own log.

Prints each measured time and its ratio to the target (< 1 meets it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN_TARGET_S = 5.0
TOY_TARGET_S = 600.0


def snakemake(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return elapsed, result


def rule_times(log: str) -> dict[str, float]:
    """Seconds per rule (summed over its jobs) from a Snakemake log: job start to 'Finished jobid'."""
    started, rule_of, total = {}, {}, defaultdict(float)
    stamp = None
    for line in log.splitlines():
        match = re.match(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", line)
        if match:
            stamp = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        match = re.match(r"(?:local)?rule (\w+):", line)
        if match:
            current = match.group(1)
            continue
        match = re.match(r"\s+jobid: (\d+)", line)
        if match and stamp is not None:
            started[match.group(1)], rule_of[match.group(1)] = stamp, current
            continue
        match = re.match(r"Finished jobid: (\d+)", line)
        if match and match.group(1) in started and stamp is not None:
            total[rule_of[match.group(1)]] += (stamp - started[match.group(1)]).total_seconds()
    return dict(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan-only", action="store_true", help="skip the toy run")
    parser.add_argument("--repeat", type=int, default=3, help="dry runs to time (best is reported)")
    parser.add_argument("--cores", type=int, default=2, help="cores for the toy run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        best = float("inf")
        for _ in range(args.repeat):
            elapsed, result = snakemake(["--profile", str(REPO / "slurm"), "-n", "--quiet", "all"], Path(tmp))
            best = min(best, elapsed)
        dry = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n", "--quiet", "rules"],
            cwd=tmp,
            capture_output=True,
            text=True,
        ).stdout
        jobs = re.search(r"^total\s+(\d+)", dry, re.M)
        trainings = re.search(r"^train\s+(\d+)", dry, re.M)
        print(
            f"plan (snakemake -n, paper matrix: {trainings.group(1) if trainings else '?'} trainings, "
            f"{jobs.group(1) if jobs else '?'} jobs): {best:.2f} s (best of {args.repeat}); "
            f"target {PLAN_TARGET_S:.0f} s; ratio {best / PLAN_TARGET_S:.2f}"
        )

    if args.plan_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-toy-") as tmp:
        elapsed, result = snakemake(
            ["--profile", str(REPO / "profiles" / "local"), "--config", "preset=toy", "--cores", str(args.cores)],
            Path(tmp),
        )
        log = result.stdout + result.stderr
        done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", log)
        print(
            f"toy run (whole DAG, default schedule, {args.cores} cores, {done[-1][1] if done else '?'} jobs): "
            f"{elapsed:.0f} s; target {TOY_TARGET_S:.0f} s; ratio {elapsed / TOY_TARGET_S:.2f}"
        )
        for rule, seconds in sorted(rule_times(log).items(), key=lambda item: -item[1]):
            print(f"  {rule:20s} {seconds:7.0f} s (sum over its jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
