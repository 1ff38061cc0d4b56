"""The benchmarks run: each one command that prints what it measured (the numbers themselves are
not checked here: a benchmark is not a timed test)."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_SCALE = REPO / "benchmarks" / "bench_scale.py"


@pytest.mark.e2e
def test_the_gpu_device_check_runs_on_the_cpu():
    """benchmarks/bench_gpu.py, in its CPU mode (small images, one step): every variant with AMP off
    and on (bfloat16 on the CPU), inference baseline vs DCL and the overheads are printed."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_gpu.py"),
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--size",
            "small",
            "--amp",
            "both",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(
        r"train +AMP (off|on) +(baseline|dcl|dcl-loop) +([\d.]+) s/iter +overhead +([+-][\d.]+)%", done.stdout
    )
    assert {(amp, variant) for amp, variant, _, _ in rows} == {
        (amp, variant) for amp in ("off", "on") for variant in ("baseline", "dcl", "dcl-loop")
    }, done.stdout
    assert all(float(seconds) > 0 for _, _, seconds, _ in rows)
    assert re.search(r"inference baseline [\d.]+ s/image +DCL [\d.]+ s/image +ratio [\d.]+", done.stdout), done.stdout
    for amp in ("off", "on"):
        assert re.search(rf"DCL overhead \(AMP {amp}\): vectorised [+-][\d.]+%, per-RoI loop [+-][\d.]+%", done.stdout)


def test_the_gpu_device_check_says_when_there_is_no_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "bench_gpu: error: no CUDA GPU visible; use --device cpu" in done.stderr


def test_the_cityscapes_ap_benchmark_runs_small():
    """benchmarks/bench_cityscapes_ap.py on a few small images: 1 worker vs 2, and the previous
    implementation (a PNG per detection), with identical APs."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_cityscapes_ap.py"),
            *("--images", "4", "--height", "128", "--width", "256", "--detections", "20", "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"before \(1 worker\): [\d.]+ s  AP [\d.]+", done.stdout), done.stdout
    assert re.search(r"after \(2 workers\): [\d.]+ s  AP [\d.]+", done.stdout), done.stdout
    assert re.search(r"ratio 1 worker / 2 workers: [\d.]+x  identical: True", done.stdout), done.stdout
    assert re.search(r"ratio previous / 2 workers: [\d.]+x  identical: True", done.stdout), done.stdout


def test_the_scale_rehearsal_runs_every_stage_fast(tmp_path):
    """benchmarks/bench_scale.py --fast (small inputs, the full-size code): every stage is measured,
    with positive figures, and a ratio where the workflow declares resources; the loader's
    before/after are printed."""
    import json

    figures = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--fast", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stages = ast.literal_eval(re.search(r"^STAGES = (\(.*?\))$", BENCH_SCALE.read_text(), re.M | re.S)[1])
    assert len(stages) == 9
    rows = {row["stage"]: row for row in json.loads(figures.read_text())["stages"]}
    assert set(rows) == set(stages)
    for name, row in rows.items():
        assert row["wall_s"] > 0 and row["peak_mb"] > 0, (name, row)
        printed = re.search(rf"^{re.escape(name)} +([\d.]+) +(\d+) ", done.stdout, re.M)
        assert printed and float(printed.group(1)) > 0, (name, done.stdout)
    for name in ("evaluate", "errors", "errors-legacy", "cityscapes-evaluate", "loader"):
        assert rows[name]["mem_ratio"] > 0, name
    for name in ("evaluate", "errors", "errors-legacy", "cityscapes-evaluate"):
        assert rows[name]["time_ratio"] > 0, name
    assert rows["status"]["declared"]["source"].startswith("undeclared")
    loader = rows["loader"]["loader"]
    assert loader["list"]["worker_mb"] > 0 and loader["serialized"]["worker_mb"] > 0
    assert len(loader["serialized"]["points"]) == 4
    assert re.search(r"each worker \(largest\): \d+ -> \d+ MB \(ratio [\d.]+", done.stdout), done.stdout
    assert re.search(r"main process: \d+ -> \d+ MB \(ratio [\d.]+", done.stdout), done.stdout
