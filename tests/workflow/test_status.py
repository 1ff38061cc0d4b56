"""``dcl status`` and the live-run side of ``dcl report``, on fabricated results and work trees.

The trees are laid out as the workflow lays them out (``dcl.workflow.experiments.Plan.document()`` of the
toy preset writes experiments.json); run.json files are written by :class:`dcl.runrecord.RunRecord`
itself where the test is about what a training leaves, and by hand where a moment in time must be
exact (speed, ETA). Expected speeds and ETAs are computed here from the fabricated times.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dcl import cli
from dcl.workflow import status
from dcl.workflow.experiments import Plan, read_config_file
from dcl import runs as dcl_runs
from dcl.runrecord import RunRecord, format_duration, progress
from instance_fixtures import default_sigint

REPO = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)


def iso(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def at(seconds: float) -> float:
    return (T0 + dt.timedelta(seconds=seconds)).timestamp()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A toy preset's working directory: results/toy/experiments.json and work_dirs/toy/."""
    monkeypatch.chdir(tmp_path)
    config = read_config_file(REPO / "configs" / "toy.yaml")
    config["defaults"]["seeds"] = [0]  # one line per experiment, as these tests name them
    plan = Plan(config, repo_root=REPO, working_dir=tmp_path)
    results = Path("results/toy")
    results.mkdir(parents=True)
    (results / "experiments.json").write_text(json.dumps(plan.document()))
    (Path("work_dirs/toy/data")).mkdir(parents=True)
    return results


def finished_folder(tree: Path, experiment: str, **extra) -> Path:
    """A run folder of the results tree as a finished run leaves it: run.json, metrics.json and
    every analysis (each a valid file of its format)."""
    from report_fixtures import coco_section, errors_record

    folder = tree / "runs" / experiment / "seed0"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record("finished", iteration=160, **extra)))
    (folder / "metrics.json").write_text(json.dumps({"iteration": 159, "total_loss": 0.5}) + "\n")
    evaluation = {"segm": coco_section(30.0)}
    if "cityscapes" in experiment:
        evaluation["cityscapes"] = {"AP": 31.0, "AP50": 55.0}
    (folder / "eval.json").write_text(json.dumps(evaluation))
    for name, legacy in (("errors.json", False), ("errors_legacy.json", True)):
        (folder / name).write_text(json.dumps(errors_record({"FN": 1.0, "fFP": 2.0, "bFP": 3.0}, legacy)))
    return folder


def live(experiment: str) -> Path:
    folder = Path("work_dirs/toy") / experiment / "seed0"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "run.json"


def record(state, *, iteration, max_iter=160, attempts=None, update=100.0, **extra):
    attempts = attempts or [
        {
            "start_time": iso(0),
            "train_start_time": iso(10),
            "start_iter": 0,
            "end_iter": None,
            "status": state,
            "host": "gpu-node-7",
            "pid": 1,
        }
    ]
    return {
        "status": state,
        "mode": "train",
        "seed": 0,
        "iteration": iteration,
        "max_iter": max_iter,
        "attempts": attempts,
        "update_time": iso(update),
        "slurm": None,
        **extra,
    }


def by_name(report, seed=0):
    """The rows of one seed (the toy preset trains two), by experiment."""
    return {r["experiment"]: r for r in report["runs"] if r["seed"] == seed}


# ----------------------------------------------------------------------------- progress
def test_progress_speed_and_eta_of_the_current_chunk():
    attempts = [
        {"start_time": iso(0), "train_start_time": iso(5), "start_iter": 0, "end_iter": 60, "status": "interrupted"},
        # Second chunk: resumed at 60, training again from t=1000; last update at t=1090 at iteration 105.
        {
            "start_time": iso(990),
            "train_start_time": iso(1000),
            "start_iter": 60,
            "end_iter": None,
            "status": "running",
        },
    ]
    state = progress(record("running", iteration=105, attempts=attempts, update=1090), at(1100))
    assert state.chunks == 2 and (state.iteration, state.max_iter) == (105, 160)
    assert state.rate == pytest.approx(45 / 90)
    # 55 iterations left at 0.5 it/s = 110 s from the last update, 10 s of which have passed.
    assert state.eta_s == pytest.approx(100.0) and state.age_s == pytest.approx(10.0)
    # No speed before a second update, none for a record without the new fields.
    assert progress(record("running", iteration=60, attempts=attempts, update=1000), at(1001)).rate is None
    old = {"status": "running", "iteration": 5, "max_iter": 10, "attempts": [{"start_iter": 0}]}
    assert progress(old).rate is None and progress(old).eta_s is None and progress(old).chunks == 1


def test_run_record_writes_what_progress_needs(tmp_path):
    path = tmp_path / "run.json"
    record_ = RunRecord.begin(
        path,
        resume=False,
        fields={
            "mode": "train",
            "host": socket.gethostname(),
            "iteration": 0,
            "max_iter": 50,
            "slurm": {"job_id": "77"},
        },
    )
    record_.start_iteration(0)
    data = json.loads(path.read_text())
    attempt = data["attempts"][-1]
    assert attempt["pid"] == os.getpid() and attempt["slurm_job_id"] == "77"
    assert attempt["train_start_time"] and data["update_time"]


@pytest.mark.parametrize(
    "seconds, text", [(None, "-"), (40, "0:00:40"), (720, "0:12:00"), (18420.4, "5:07:00"), (183600, "51:00:00")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# ----------------------------------------------------------------------------- states
def test_every_state_from_run_folders_work_dirs_and_squeue(tree):
    finished_folder(tree, "toy_cityscapes_baseline")
    live("toy_cityscapes_dcl").write_text(json.dumps(record("running", iteration=90, update=170)))
    live("toy_coco_baseline").write_text(
        json.dumps(
            record(
                "failed",
                iteration=2,
                error="FloatingPointError: Loss became infinite or NaN at iteration=2",
                exit_code=1,
            )
        )
    )
    live("toy_coco_dcl").write_text(json.dumps(record("interrupted", iteration=60, signal="SIGTERM")))
    # toy_coco_dcl_loss_weight_0.4 and the two RefineMask runs: no record at all.
    report = status.collect(tree, use_slurm=False, at=at(180))
    runs = by_name(report)
    assert len(runs) == 7  # the ablation point LOSS_WEIGHT 1.2 is toy_coco_dcl's run: one line
    assert runs["toy_coco_dcl"]["also"] == ["toy_coco_dcl_loss_weight_1.2"]
    assert {name: r["state"] for name, r in runs.items()} == {
        "toy_cityscapes_baseline": "finished",
        "toy_cityscapes_dcl": "running",
        "toy_coco_baseline": "failed",
        "toy_coco_dcl": "interrupted",
        "toy_coco_dcl_loss_weight_0.4": "pending",
        "toy_cityscapes_refinemask_baseline": "pending",
        "toy_cityscapes_refinemask_dcl": "pending",
    }
    running = runs["toy_cityscapes_dcl"]
    assert running["rate"] == pytest.approx(90 / 160)  # 90 iterations from t=10 to t=170
    assert running["eta_s"] == pytest.approx(70 / (90 / 160) - 10)
    failed = runs["toy_coco_baseline"]
    assert "Loss became infinite or NaN" in failed["reason"]
    assert failed["log"] == "logs/toy/train/toy_coco_baseline/seed0.log"
    assert runs["toy_coco_dcl"]["reason"] == "stopped by SIGTERM" and runs["toy_coco_dcl"]["chunks"] == 1
    assert report["totals"] == {
        "finished": 1,
        "running": 1,
        "queued": 0,
        "interrupted": 1,
        "incomplete": 0,
        "failed": 1,
        "pending": 3,
        "missing": 0,
    }
    assert report["iterations"] == {"done": 160 + 90 + 2 + 60, "total": 4 * 160}

    # squeue: the interrupted run's next chunk is queued, the fresh one is starting on a node.
    jobs = [
        status.SlurmJob("1001", "PENDING", "", "rule_train_wildcards_toy_coco_dcl_0"),
        status.SlurmJob("1002", "RUNNING", "gpu03", "rule_train_wildcards_toy_coco_dcl_loss_weight_0.4_0"),
        status.SlurmJob("999", "RUNNING", "gpu01", "rule_train_wildcards_toy_cityscapes_baseline_0"),
    ]
    expected = {r.experiment: r for r in dcl_runs.load_experiments(tree / "experiments.json")[1]}
    queued = status.run_status(tree, expected["toy_coco_dcl"], jobs, at(180))
    assert (queued.state, queued.job_id, queued.node) == ("queued", "1001", None)
    starting = status.run_status(tree, expected["toy_coco_dcl_loss_weight_0.4"], jobs, at(180))
    assert (starting.state, starting.job_id, starting.node) == ("running", "1002", "gpu03")
    # A finished run stays finished whatever squeue lists.
    assert status.run_status(tree, expected["toy_cityscapes_baseline"], jobs, at(180)).state == "finished"


def test_gpu_hours_used_and_disk_of_each_work_directory(tree, capsys):
    finished_folder(tree, "toy_cityscapes_baseline", wall_time_s=5400.0, gpus={"count": 4, "type": "A100"})
    work = live("toy_cityscapes_baseline").parent
    (work / "model_0000099.pth").write_bytes(b"x" * 3_000_000)
    (work / "inference").mkdir()
    (work / "inference" / "coco_instances_results.json").write_bytes(b"[]" * 250_000)
    live("toy_coco_dcl").write_text(json.dumps(record("running", iteration=9, wall_time_s=720.0, gpus={"count": 0})))
    live("toy_coco_baseline").write_text(json.dumps(record("running", iteration=9, wall_time_s="soon")))
    report = status.collect(tree, use_slurm=False, at=at(180))
    runs = by_name(report)
    assert runs["toy_cityscapes_baseline"]["gpu_hours"] == pytest.approx(1.5 * 4)
    assert runs["toy_cityscapes_baseline"]["disk_bytes"] == 3_500_000
    assert runs["toy_coco_dcl"]["gpu_hours"] == 0  # on the CPU
    assert runs["toy_coco_baseline"]["gpu_hours"] is None  # the record does not say
    assert runs["toy_cityscapes_refinemask_dcl"]["disk_bytes"] is None  # no work directory
    assert report["gpu_hours"] == pytest.approx(6.0)
    assert report["disk_bytes"] == 3_500_000 + sum(os.path.getsize(p) for p in Path("work_dirs/toy").rglob("run.json"))
    print(status._text(report))
    text = capsys.readouterr().out
    assert "6.0 GPU-hours used" in text
    line = next(line for line in text.splitlines() if line.startswith("toy_cityscapes_baseline "))
    assert " 6.0 " in line and "3.5 MB" in line


def test_status_and_the_report_agree_on_every_run(tree, capsys):
    """A trained run whose analyses are not all written (or one is broken) is not finished in
    `dcl status` either: the two views count the same runs as finished, incomplete and failed."""
    finished_folder(tree, "toy_cityscapes_baseline")
    (finished_folder(tree, "toy_cityscapes_dcl") / "errors_legacy.json").unlink()  # its job has not run yet
    (finished_folder(tree, "toy_coco_baseline") / "eval.json").write_text('{"segm": {"AP"')  # torn
    live("toy_coco_dcl").write_text(json.dumps(record("running", iteration=9)))
    report = status.collect(tree, use_slurm=False, at=at(180))
    runs = by_name(report)
    assert runs["toy_cityscapes_dcl"]["state"] == "incomplete"
    assert "not written yet: errors_legacy.json" in runs["toy_cityscapes_dcl"]["reason"]
    assert runs["toy_coco_baseline"]["state"] == "failed" and "eval.json" in runs["toy_coco_baseline"]["reason"]
    assert cli.main(["report", str(tree)]) == 0
    capsys.readouterr()
    inventory = {
        row["experiment"]: row["status"]
        for row in csv.DictReader((tree / "tables" / "run_inventory.csv").open())
        if row["experiment"] in runs  # the ablation point's own row shares its base's folder
    }
    shared = {"finished", "running", "incomplete", "failed"}
    assert {name: r["state"] for name, r in runs.items() if r["state"] in shared} == {
        name: state for name, state in inventory.items() if state in shared
    }
    assert report["totals"]["finished"] == 1 == list(inventory.values()).count("finished")


def test_a_running_record_without_a_live_job_or_process_is_interrupted(tree):
    expected = {r.experiment: r for r in dcl_runs.load_experiments(tree / "experiments.json")[1]}
    live("toy_coco_dcl").write_text(
        json.dumps(record("running", iteration=90, slurm={"job_id": "4242", "nodes": "gpu09"}))
    )
    alive = status.run_status(
        tree, expected["toy_coco_dcl"], [status.SlurmJob("4242", "RUNNING", "gpu09", "x")], at(120)
    )
    assert (alive.state, alive.job_id, alive.node) == ("running", "4242", "gpu09")
    gone = status.run_status(tree, expected["toy_coco_dcl"], [], at(120))
    assert gone.state == "interrupted" and "Slurm job 4242 has ended" in gone.reason
    # Without squeue the Slurm job cannot be checked: the record is believed.
    assert status.run_status(tree, expected["toy_coco_dcl"], None, at(120)).state == "running"
    # A local run: its process on this host.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    attempts = [
        {
            "start_time": iso(0),
            "train_start_time": iso(10),
            "start_iter": 0,
            "status": "running",
            "host": socket.gethostname(),
            "pid": int(dead.stdout),
        }
    ]
    live("toy_coco_baseline").write_text(json.dumps(record("running", iteration=90, attempts=attempts)))
    local = status.run_status(tree, expected["toy_coco_baseline"], None, at(120))
    assert local.state == "interrupted" and "has ended" in local.reason
    attempts[0]["pid"] = os.getpid()
    live("toy_coco_baseline").write_text(json.dumps(record("running", iteration=90, attempts=attempts)))
    assert status.run_status(tree, expected["toy_coco_baseline"], None, at(120)).state == "running"


def test_a_results_tree_copied_elsewhere_shows_finished_and_missing(tree, tmp_path):
    finished_folder(tree, "toy_coco_dcl")
    live("toy_coco_baseline").write_text(json.dumps(record("running", iteration=90)))
    copy = tmp_path / "archive" / "results" / "toy"
    shutil.copytree(tree, copy)
    runs = by_name(status.collect(copy, use_slurm=False))
    assert runs["toy_coco_dcl"]["state"] == "finished"
    # The copy's experiments.json points at ../../work_dirs, which is not there.
    assert {r["state"] for name, r in runs.items() if name != "toy_coco_dcl"} == {"missing"}


def test_status_command_end_to_end(tree, tmp_path):
    """`dcl status` as a subprocess: the text table, --json, the totals line, and squeue (a stand-in
    on PATH that prints what the real one prints for these --format options)."""
    live("toy_coco_dcl").write_text(
        json.dumps(record("running", iteration=90, update=170, slurm={"job_id": "5150", "nodes": "gpu04"}))
    )
    live("toy_coco_baseline").write_text(
        json.dumps(record("failed", iteration=2, error="ValueError: bad", exit_code=1))
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(
        "#!/bin/sh\n"
        "echo '5150|RUNNING|gpu04|rule_train_wildcards_toy_coco_dcl_0'\n"
        "echo '5151|PENDING||rule_train_wildcards_toy_cityscapes_dcl_0'\n"
    )
    squeue.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "dcl", "status"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = {
        line.split()[0]: line for line in done.stdout.splitlines()[2:-1] if line.strip() and not line.startswith(" ")
    }
    assert lines["toy_coco_dcl"].startswith("toy_coco_dcl (+1)")  # and the ablation point it is
    assert "running" in lines["toy_coco_dcl"] and "90/160" in lines["toy_coco_dcl"] and "5150" in lines["toy_coco_dcl"]
    assert "gpu04" in lines["toy_coco_dcl"]
    assert "queued" in lines["toy_cityscapes_dcl"] and "5151" in lines["toy_cityscapes_dcl"]
    assert "ValueError: bad; log: logs/toy/train/toy_coco_baseline/seed0.log" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("7 runs: 1 running, 1 queued, 1 failed, 4 pending")
    assert "with squeue" in done.stdout.splitlines()[0]

    as_json = subprocess.run(
        [*command, "results/toy", "--json", "--no-slurm"], capture_output=True, text=True, timeout=60, env=env
    )
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["slurm"] is False and by_name(data)["toy_cityscapes_dcl"]["state"] == "pending"

    # --watch refreshes until interrupted; one line of JSON per refresh.
    watch = subprocess.Popen(
        [*command, "--watch", "0.2", "--json", "--no-slurm"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )
    first, second = watch.stdout.readline(), watch.stdout.readline()
    watch.send_signal(2)
    assert watch.wait(timeout=30) == 0
    assert json.loads(first)["preset"] == "toy" and json.loads(second)["totals"]["failed"] == 1

    missing = subprocess.run([*command, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 1 and "experiments file not found" in missing.stderr


# ----------------------------------------------------------------------------- dcl report beside a running workflow
def test_report_lists_live_runs_and_writes_nothing_into_run_folders(tree, capsys):
    live("toy_coco_dcl").write_text(json.dumps(record("running", iteration=90, update=170)))
    live("toy_coco_baseline").write_text(
        json.dumps(record("failed", iteration=2, error="FloatingPointError: NaN", exit_code=1))
    )
    before = sorted(str(p) for p in Path(".").rglob("*"))
    assert cli.main(["report", str(tree)]) == 0
    after = sorted(str(p) for p in Path(".").rglob("*"))
    new = [p for p in after if p not in before]
    assert new and all(
        p.startswith(("results/toy/tables", "results/toy/figures"))
        or p in ("results/toy/README.md", "results/toy/report.tex", "results/toy/report.pdf")
        for p in new
    ), new
    readme = (tree / "README.md").read_text()
    assert "8 runs expected: 0 finished, 2 running, 0 incomplete, 1 failed, 5 missing." in readme
    assert "`toy_coco_dcl` seed 0: **running**: training (iteration 90/160, 0.56 it/s)" in readme
    assert (
        "`toy_coco_baseline` seed 0: **failed**: training failed (iteration 2/160): FloatingPointError: NaN; "
        "log: logs/toy/train/toy_coco_baseline/seed0.log"
    ) in readme
    # Unchanged run files, unchanged README (no ETA or age in it).
    assert cli.main(["report", str(tree)]) == 0 and (tree / "README.md").read_text() == readme


# ----------------------------------------------------------------------------- a real training, mid-run
@pytest.mark.e2e
def test_a_toy_training_mid_run_is_running_with_an_eta_then_interrupted(tmp_path):
    """The workflow's own command for one toy run (Plan.train_command, a longer schedule): while it
    trains, `dcl status` shows it running with its iteration and an ETA and `dcl report` lists it
    as running; stopped by SIGTERM, it is interrupted."""
    import shlex
    import signal
    import time

    config = read_config_file(REPO / "configs" / "toy.yaml")
    config["train_overrides"] = {
        "SOLVER.MAX_ITER": 2000,
        "SOLVER.IMS_PER_BATCH": 2,
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.CHECKPOINT_PERIOD": 100000,
    }
    plan = Plan(config, repo_root=REPO, working_dir=tmp_path)
    results = tmp_path / plan.results
    results.mkdir(parents=True)
    (results / "experiments.json").write_text(json.dumps(plan.document()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "dcl", "data", "toy", "--out", "datasets/toy", "--num-train", "8", "--num-val", "4"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    words = shlex.split(plan.train_command(plan.run("toy_coco_baseline", 0)))  # env ... dcl train ...
    at_dcl = words.index("dcl")
    live_record = tmp_path / plan.output_dir(plan.run("toy_coco_baseline", 0)) / "run.json"
    training = subprocess.Popen(
        [*words[:at_dcl], sys.executable, "-m", "dcl", *words[at_dcl + 1 :]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # two progress updates after the start: a speed
            info = json.loads(live_record.read_text()) if live_record.is_file() else {}
            if (info.get("iteration") or 0) >= 40:
                break
            assert training.poll() is None, "the training ended early"
            time.sleep(1)
        else:
            pytest.fail("no progress in 5 minutes")
        shown = subprocess.run(
            [sys.executable, "-m", "dcl", "status", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        row = by_name(json.loads(shown.stdout))["toy_coco_baseline"]
        assert row["state"] == "running" and row["iteration"] >= 40 and row["max_iter"] == 2000, row
        assert row["rate"] > 0 and row["eta_s"] > 0 and row["chunks"] == 1
        assert by_name(json.loads(shown.stdout))["toy_coco_dcl"]["state"] == "pending"
        reported = subprocess.run(
            [sys.executable, "-m", "dcl", "report", str(plan.results)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert reported.returncode == 0, reported.stderr
        assert "`toy_coco_baseline` seed 0: **running**: training (iteration " in (results / "README.md").read_text()
    finally:
        os.killpg(training.pid, signal.SIGTERM)
        code = training.wait(timeout=120)
    assert code == 75
    stopped = subprocess.run(
        [sys.executable, "-m", "dcl", "status", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    row = by_name(json.loads(stopped.stdout))["toy_coco_baseline"]
    assert row["state"] == "interrupted" and row["reason"] == "stopped by SIGTERM"


# ----------------------------------------------------------------------------- issue 22: mutation survivors
def test_a_failure_without_an_error_names_its_exit_code_and_an_unknown_status_is_named(tree):
    live("toy_coco_baseline").write_text(json.dumps(record("failed", iteration=2, exit_code=3)))
    live("toy_coco_dcl").write_text(json.dumps(record("exploded", iteration=5, exit_code=0)))
    runs = by_name(status.collect(tree, use_slurm=False, at=at(180)))
    assert (runs["toy_coco_baseline"]["state"], runs["toy_coco_baseline"]["reason"]) == ("failed", "exit code 3")
    assert (runs["toy_coco_dcl"]["state"], runs["toy_coco_dcl"]["reason"]) == (
        "failed",
        "run.json has an unknown status 'exploded'",
    )


def test_the_totals_line_sums_iterations_eta_gpu_hours_and_disk():
    def row(experiment, state, **fields):
        return status.RunStatus(experiment=experiment, seed=0, state=state, also=[], **fields).as_dict()

    report = {
        "preset": "toy",
        "results_dir": "results/toy",
        "time": "2026-01-05T12:00:00+00:00",
        "slurm": False,
        "runs": [
            row("a", "finished", iteration=160, max_iter=160, chunks=1, gpu_hours=1.0, disk_bytes=400_000),
            row("b", "running", iteration=40, max_iter=160, chunks=1, rate=0.5, eta_s=300.0, gpu_hours=0.5),
        ],
        "totals": dict.fromkeys(status.STATES, 0) | {"finished": 1, "running": 1},
        "iterations": {"done": 200, "total": 320},
        "gpu_hours": 1.5,
        "disk_bytes": 1_000_000,
    }
    # 200/320 = 62.5% (printed to the even 62), the running run's ETA 300 s, 10^6 bytes = 1.0 MB.
    assert status._text(report).splitlines()[-1] == (
        "2 runs: 1 finished, 1 running; 200/320 iterations (62%); running runs done in 0:05:00; "
        "1.5 GPU-hours used; work directories 1.0 MB"
    )
    report["iterations"] = {"done": 320, "total": 320}
    assert "320/320 iterations (100%)" in status._text(report)


@pytest.mark.parametrize(
    "size, text",
    [(999, "1 kB"), (999_999, "1000 kB"), (1_000_000, "1.0 MB"), (350_000_000, "350 MB"), (2_500_000_000, "2.5 GB")],
)
def test_disk_sizes_switch_unit_at_a_power_of_ten(size, text):
    assert status._size(size) == text


def test_the_age_of_a_record_is_the_time_since_its_last_update():
    assert progress({"update_time": iso(100)}, at(100)).age_s == 0.0
    assert progress({"update_time": iso(100)}, at(100.5)).age_s == 0.5
    assert progress({"update_time": iso(100)}, at(40)).age_s == 0.0  # a clock behind the writer's


def test_closing_a_resumed_record_adds_this_attempts_time_to_the_wall_time(tmp_path, monkeypatch):
    from dcl import runrecord

    path = tmp_path / "run.json"
    path.write_text(json.dumps(record("interrupted", iteration=5, max_iter=10, wall_time_s=100.0)))
    clock = {"now": 1000.0}
    monkeypatch.setattr(runrecord.time, "monotonic", lambda: clock["now"])
    run = RunRecord.begin(path, resume=True, fields={"mode": "train", "iteration": 0, "max_iter": 10})
    clock["now"] = 1012.5
    run.close("finished", 0, iteration=10)
    data = json.loads(path.read_text())
    assert (data["status"], data["iteration"], data["wall_time_s"]) == ("finished", 10, 112.5)
    assert len(data["attempts"]) == 2


def test_run_fields_record_the_environment_the_gpus_and_the_layout():
    from dcl.runrecord import run_fields

    environment = {
        "cuda_devices": ["NVIDIA H100"],
        "versions": {"torch": "2.4.0", "python": "3.11.9"},
        "detectron2": {"version": "0.6"},
        "compat_shims": ["numpy_float_aliases"],
    }
    fields = dict(
        command=["dcl", "train"],
        config_file="configs/x.yaml",
        overrides=["SOLVER.MAX_ITER", "10"],
        seed=3,
        output_dir=".",
        max_iter=10,
        num_gpus=4,
        distributed={"num_machines": 2, "machine_rank": 0},
        weights={},
        slurm=None,
        environment=environment,
    )
    train = run_fields(eval_only=False, on_gpu=True, **fields)
    assert train["compat_shims"] == ["numpy_float_aliases"]
    assert train["versions"] == {"torch": "2.4.0", "python": "3.11.9", "detectron2": "0.6"}
    assert train["gpus"] == {"count": 8, "type": "NVIDIA H100"}
    assert train["distributed"] == {"num_machines": 2, "machine_rank": 0, "num_gpus_per_machine": 4}
    assert (train["mode"], train["iteration"], train["max_iter"]) == ("train", 0, 10)
    evaluation = run_fields(eval_only=True, on_gpu=False, **fields)
    assert evaluation["gpus"] == {"count": 0, "type": None}
    assert (evaluation["mode"], evaluation["iteration"], evaluation["max_iter"]) == ("eval-only", None, None)
