"""dcl.workflow.cost and `dcl plan`'s cost lines: schedules read as detectron2 reads them, the arithmetic
of GPU-hours, chunks and disk written out by hand, checkpoint sizes measured on the real models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcl.workflow import cost
from dcl.workflow.experiments import Plan, read_config_file
from instance_fixtures import run_dcl

REPO = Path(__file__).resolve().parents[2]


def plan_of(name: str) -> Plan:
    return Plan(read_config_file(REPO / "configs" / name), name, repo_root=REPO, working_dir=REPO)


@pytest.mark.parametrize("preset", ["paper.yaml", "toy.yaml"])
def test_schedules_are_what_detectron2_loads(preset):
    """For every training of the preset: MAX_ITER, IMS_PER_BATCH and CHECKPOINT_PERIOD as
    detectron2's config system merges the file chain and the run's overrides."""
    from dcl.training.config import load_config

    plan = plan_of(preset)
    for run_ in plan.train_jobs:
        overrides = [*run_.overrides, *plan.global_overrides]
        cfg = load_config(str(REPO / run_.config_file), [word for pair in overrides for word in pair])
        expected = (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.CHECKPOINT_PERIOD)
        got = cost.schedule(str(REPO / run_.config_file), overrides)
        assert (got.max_iter, got.ims_per_batch, got.checkpoint_period) == expected, run_.experiment


def test_a_base_chain_that_loops_is_an_input_error(tmp_path):
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(cost.InputError, match="the _BASE_ chain loops: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        cost.schedule(str(tmp_path / "a.yaml"), [])


def test_run_cost_arithmetic():
    # COCO 1x: 90k iterations x 16 images x (0.261 s x 8 GPUs / 16 images) = 52.2 GPU-hours.
    coco = cost.Schedule(max_iter=90000, ims_per_batch=16, checkpoint_period=5000)
    long_jobs = cost.run_cost("coco", "mask_rcnn", coco, gpus=4, runtime_minutes=1440, keep=2)
    assert long_jobs.gpu_hours == pytest.approx(52.2)
    assert long_jobs.wall_hours == pytest.approx(13.05)
    assert long_jobs.chunks == 1
    # 12-hour jobs, each signalled 5 minutes early: 13.05 h takes 2.
    assert cost.run_cost("coco", "mask_rcnn", coco, gpus=4, runtime_minutes=720, keep=2).chunks == 2
    # 18 periodic checkpoints of 353.5 MB; 2 kept, plus the 177.5 MB final weights.
    assert long_jobs.disk_gb == pytest.approx((2 * 353.5 + 177.5) / 1000)
    assert long_jobs.disk_gb_keep_all == pytest.approx((18 * 353.5 + 177.5) / 1000)
    # Fewer periodic checkpoints than `keep`: all of them.
    short = cost.Schedule(max_iter=24000, ims_per_batch=8, checkpoint_period=24000)
    assert cost.run_cost("cityscapes", "mask_rcnn", short, 4, 720, keep=2).disk_gb == pytest.approx(0.531)


def test_dcl_plan_prints_each_experiments_cost_and_the_totals():
    plan = plan_of("paper.yaml")
    done = run_dcl("plan", REPO / "configs" / "paper.yaml", cwd=REPO)
    assert done.returncode == 0, done.stderr
    output = done.stdout
    costs = [plan.cost(r) for r in plan.train_jobs]
    total = re.search(r"total: (\d+) GPU-hours.*checkpoints (\d+) GB once trained.*?(\d+) GB if every", output)
    assert total, output
    assert int(total.group(1)) == round(sum(c.gpu_hours for c in costs))
    assert int(total.group(2)) == round(sum(c.disk_gb for c in costs))
    assert int(total.group(3)) == round(sum(c.disk_gb_keep_all for c in costs))
    coco = next(line for line in output.splitlines() if line.startswith("coco_dcl "))
    # 4 GPUs, 13.1 h a run, one 24-hour chunk, 3 seeds x 52.2 GPU-hours.
    assert re.search(r" 4 +13\.1 +1 +156\.6 ", coco), coco


def test_the_readme_states_the_paper_plans_totals():
    output = run_dcl("plan", REPO / "configs" / "paper.yaml", cwd=REPO).stdout
    total = re.search(r"total: (\d+) GPU-hours.*checkpoints (\d+) GB once trained.*?(\d+) GB if every", output)
    readme = (REPO / "README.md").read_text()
    for figure, unit in zip(total.groups(), ("GPU-hours", "GB", "GB")):
        assert f"{figure} {unit}" in readme, f"README does not state {figure} {unit}"


@pytest.mark.e2e
def test_checkpoint_sizes_are_the_measured_ones():
    """benchmarks/bench_checkpoints.py --check: the real models' checkpoints within 2 % of
    dcl.workflow.cost.CHECKPOINT_MB."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_checkpoints.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert len(re.findall(r"(periodic|final) +[\d.]+ +[\d.]+ [\d.]+", done.stdout)) == 12, done.stdout
