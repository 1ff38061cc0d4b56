"""Experiment tracking (dcl.tracking): MLflow and Weights & Biases for real, with no network.

Each tracker test trains the toy model in two chunks (a stop signal, then ``--resume``, as a
pre-empted Slurm job does), reads what the tracker stored back with the library's own reader
(MLflow: ``MlflowClient`` on a local SQLite store; W&B: ``wandb leet inspect --json`` of the
offline run files) and compares every logged series with ``metrics.json``. The unit tests check
that with tracking off nothing changes: the workflow's commands, and no tracker library imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcl.io import InputError, read_json

from toy_training import CONFIGS, REPO, TOY_CITYSCAPES, TOY_COCO

EXIT_INTERRUPTED = 75
MAX_ITER, STOP_AT = 6, 2  # the first chunk stops after iteration STOP_AT, the second finishes

# `dcl train` that signals itself (SIGUSR1, as Slurm before a time limit) after iteration STOP_AT
# unless DCL_TEST_NO_STOP is set.
SELF_SIGNALLING = f"""
import os, signal, sys
import dcl.training.engine  # first: applies dcl.compat before detectron2 loads
from detectron2.engine import HookBase

class SignalSelf(HookBase):
    def after_step(self):
        if self.trainer.iter == {STOP_AT}:
            os.kill(os.getpid(), signal.SIGUSR1)

build_hooks = dcl.training.engine.Trainer.build_hooks
dcl.training.engine.Trainer.build_hooks = lambda self: [SignalSelf()] + build_hooks(self)
from dcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def tracker_env(toy_datasets, home: Path) -> dict:
    """No network, no user settings: a fresh HOME, no tracker variables of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1", "HOME": str(home)}


def train_in_two_chunks(tmp_path, env, config, out, tracking, *extra):
    """Chunk 1 is stopped by its own SIGUSR1 after iteration STOP_AT (exit 75); chunk 2 resumes."""
    command = [
        "train",
        "--config-file",
        config,
        *tracking,
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "2",
        "TEST.EVAL_PERIOD",
        "2",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "4",
        *extra,
        "OUTPUT_DIR",
        str(out),
    ]
    launcher = tmp_path / "self_signalling.py"
    launcher.write_text(SELF_SIGNALLING)
    first = subprocess.run(
        [sys.executable, str(launcher), *command], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert first.returncode == EXIT_INTERRUPTED, (first.stdout + first.stderr)[-3000:]
    state = read_json(out / "tracking.json")
    second = subprocess.run(
        [sys.executable, "-m", "dcl", *command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert read_json(out / "tracking.json") == state, "the resumed chunk logs to the same tracker run"
    return state


def metrics_json_series(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.json as {key: [(iteration, value), ...]}."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (output_dir / "metrics.json").read_text().splitlines():
        entry = json.loads(line)
        iteration = entry.pop("iteration")
        for key, value in entry.items():
            series.setdefault(key, []).append((iteration, float(value)))
    return series


def assert_same_series(logged: dict, expected: dict) -> None:
    assert set(logged) == set(expected), set(logged) ^ set(expected)
    for key in expected:
        got, want = sorted(logged[key]), sorted(expected[key])
        assert [step for step, _ in got] == [step for step, _ in want], key
        for (_, a), (_, b) in zip(got, want):
            assert a == b or (math.isnan(a) and math.isnan(b)), (key, got, want)


# ----------------------------------------------------------------------------- MLflow
@pytest.mark.e2e  # ~30 s: two chunks, with the Cityscapes evaluation
def test_mlflow_logs_what_metrics_json_has_and_a_resumed_run_continues(toy_datasets, tmp_path):
    from mlflow.tracking import MlflowClient

    env = tracker_env(toy_datasets, tmp_path / "home")
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/store/mlflow.db"
    tracking = ["--tracking", "mlflow", "--tracking-uri", uri, "--tracking-project", "dcl-test"]
    tracking += ["--tracking-name", "toy/seed4", "--tracking-tag", "experiment=toy_cityscapes_dcl"]
    state = train_in_two_chunks(tmp_path, env, TOY_CITYSCAPES, out, tracking)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("dcl-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [state["run_id"]], "one tracker run for both chunks"
    run = runs[0]
    assert (run.info.status, run.info.run_name) == ("FINISHED", "toy/seed4")
    record = read_json(out / "run.json")
    tags = run.data.tags
    assert tags["experiment"] == "toy_cityscapes_dcl" and tags["seed"] == "4" and tags["mode"] == "train"
    assert tags["git_commit"] == str(record["git_commit"]) or record["git_commit"] is None
    assert tags["output_dir"] == record["output_dir"]
    assert run.data.params["SOLVER.MAX_ITER"] == str(MAX_ITER) and run.data.params["SEED"] == "4"
    assert run.data.params["DATASETS.TEST"] == "('toy_cityscapes_val',)"
    assert [artifact.path for artifact in client.list_artifacts(run.info.run_id)] == ["config.yaml"]

    logged = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics
    }
    expected = metrics_json_series(out)
    assert_same_series(logged, expected)
    # Losses, LR, the periodic and final COCO AP and the official Cityscapes AP, from both chunks.
    assert {"total_loss", "loss_mask", "lr", "segm/AP", "bbox/AP", "cityscapes/AP", "cityscapes/AP50"} <= set(logged)
    assert [step for step, _ in logged["segm/AP"]] == [1, 3, MAX_ITER]
    assert min(step for step, _ in logged["lr"]) <= STOP_AT < max(step for step, _ in logged["lr"])


def test_a_tracker_that_cannot_start_stops_dcl_train_in_one_line(toy_datasets, tmp_path):
    env = tracker_env(toy_datasets, tmp_path / "home") | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dcl", "train", "--config-file", TOY_COCO, "--tracking", "mlflow"]
    command += ["--tracking-uri", "http://127.0.0.1:9", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dcl train: error: --tracking mlflow: cannot start the tracker run:"), last
    assert "Traceback" not in result.stderr
    record = read_json(out / "run.json")
    assert record["status"] == "failed" and "cannot start the tracker run" in record["error"]
    assert not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- W&B
def wandb_records(run_dir: Path, env: dict) -> list[dict]:
    """The records of an offline W&B run, as wandb's own reader (wandb-core) prints them."""
    wandb = Path(sys.executable).parent / "wandb"
    result = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_dir)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_wandb_offline_writes_run_files_with_what_metrics_json_has(toy_datasets, tmp_path):
    env = tracker_env(toy_datasets, tmp_path / "home")
    out = tmp_path / "out"
    tracking = ["--tracking", "wandb", "--tracking-offline", "--tracking-project", "dcl-test"]
    tracking += ["--tracking-name", "toy/seed4", "--tracking-tag", "method=baseline"]
    state = train_in_two_chunks(tmp_path, env, TOY_COCO, out, tracking)
    assert state["offline"] is True

    # One offline run folder per chunk, both of the same run: `wandb sync` uploads them in order.
    chunks = sorted((out / "wandb").glob("offline-run-*"))
    assert len(chunks) == 2 and all(folder.name.endswith(f"-{state['run_id']}") for folder in chunks)
    logged: dict[str, list[tuple[int, float]]] = {}
    exits = []
    for folder in chunks:
        records = wandb_records(folder, env)
        run = next(r["run"] for r in records if r["type"] == "run")
        assert run["run_id"] == state["run_id"] and run["project"] == "dcl-test"
        assert run["display_name"] == "toy/seed4"
        assert "method:baseline" in run["tags"] and "seed:4" in run["tags"]
        config = run["config"]["update"]
        assert config["config"]["SOLVER"]["MAX_ITER"] == MAX_ITER and config["tags"]["method"] == "baseline"
        for record in records:
            if record["type"] == "history":
                item = record["history"]["item"]
                for key, value in item.items():
                    if not key.startswith("_"):
                        logged.setdefault(key, []).append((item["_step"], float(value)))
            elif record["type"] == "exit":
                exits.append(record["exit"].get("exit_code", 0))
        assert (folder / "files" / "config.yaml").exists()
    assert exits == [EXIT_INTERRUPTED, 0]
    # The README's sync command, without network: it would upload both chunks.
    wandb = Path(sys.executable).parent / "wandb"
    dry = subprocess.run([str(wandb), "sync", "--dry-run", *map(str, chunks)], env=env, capture_output=True, text=True)
    said = dry.stdout + dry.stderr
    assert dry.returncode == 0 and all(f"{folder.name}/run-{state['run_id']}.wandb" in said for folder in chunks), said
    assert_same_series(logged, metrics_json_series(out))
    assert {"total_loss", "lr", "segm/AP", "bbox/AP50"} <= set(logged)


def test_report_files_go_to_an_offline_wandb_run_under_their_folders(tmp_path, monkeypatch):
    from dcl import tracking

    for variable in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    results = tmp_path / "results" / "toy"
    files = [results / "README.md", results / "tables" / "main_results.md", results / "figures" / "a.png"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    options = tracking.TrackingOptions(backend="wandb", project="dcl-test", offline=True, tags=(("preset", "toy"),))
    run_id = tracking.log_report(options, files + [results / "report.pdf"], results, tmp_path / "work")
    (folder,) = (tmp_path / "work" / "wandb").glob(f"offline-run-*-{run_id}")
    for path in files:
        assert (folder / "files" / path.relative_to(results)).read_text() == path.name
    assert not (tmp_path / "work" / tracking.TRACKING_STATE).exists()  # every report is a new run
    records = wandb_records(folder, {**os.environ, "HOME": str(tmp_path / "home")})
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == "report" and {"kind:report", "preset:toy"} <= set(run["tags"])


# ----------------------------------------------------------------------------- the writer, in-process
class RecordingTracker:
    """A stand-in tracker run: what the writer logs, in order."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_the_tracking_writer_logs_what_the_json_writer_writes(tmp_path):
    """detectron2's JSONWriter and the TrackingWriter on one EventStorage, written at the same
    moments (every 3 iterations, smoothed losses, an evaluation between two writes, a last write
    with nothing new): the same values at the same iterations, each iteration logged once, in order."""
    from detectron2.utils.events import EventStorage, JSONWriter

    from dcl.training.engine import TrackingWriter

    tracker = RecordingTracker()
    json_writer, writer = JSONWriter(str(tmp_path / "metrics.json")), TrackingWriter(tracker)
    with EventStorage(0) as storage:
        for iteration in range(10):
            storage.iter = iteration
            storage.put_scalars(total_loss=1.0 / (iteration + 1), lr=0.01 * iteration)  # smoothed (median of 20)
            storage.put_scalar("time", 0.5 + iteration, smoothing_hint=False)
            if iteration == 4:
                storage.put_scalars(**{"segm/AP": 12.5, "cityscapes/AP": float("nan")}, smoothing_hint=False)
            if iteration % 3 == 2:
                json_writer.write()
                writer.write()
        json_writer.write()
        writer.write()
        writer.write()  # nothing new: nothing logged
    json_writer.close()
    assert [step for step, _ in tracker.logged] == sorted({step for step, _ in tracker.logged})
    logged: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in tracker.logged:
        for key, value in metrics.items():
            logged.setdefault(key, []).append((step, float(value)))
    assert_same_series(logged, metrics_json_series(tmp_path))
    assert [step for step, _ in logged["segm/AP"]] == [4]


def test_a_tracker_that_fails_while_logging_warns_once_and_training_goes_on(caplog):
    from dcl import tracking

    class Failing(tracking.Tracker):
        backend = "mlflow"
        calls = 0

        def _log_metrics(self, metrics, step):
            self.calls += 1
            raise ConnectionError("store went away")

        def _finish(self, status):
            raise ConnectionError("still gone")

    tracker = Failing()
    tracker.log_metrics({"loss": 1.0, "note": "not a number"}, 0)
    tracker.log_metrics({"loss": 0.5}, 1)
    tracker.finish("finished")  # never raises
    assert tracker.broken and tracker.calls == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "store went away" in warnings[0] and "not logging any more" in warnings[0]


# ----------------------------------------------------------------------------- off by default
def plan(config_changes=None):
    from dcl.workflow.experiments import Plan

    config = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    config.update(config_changes or {})
    return Plan(config, "toy.yaml", repo_root=REPO, working_dir=REPO)


@pytest.mark.parametrize("off", [None, {}, {"backend": None}, {"backend": "none", "project": "x"}])
def test_with_tracking_off_the_commands_and_experiments_json_are_unchanged(off):
    reference = plan()
    turned_off = plan({"tracking": off})
    commands = [reference.train_command(run) for run in reference.jobs.values()]
    assert [turned_off.train_command(run) for run in turned_off.jobs.values()] == commands
    assert not any("--tracking" in command for command in commands)
    assert turned_off.document() == reference.document() and turned_off.digest() == reference.digest()
    assert turned_off.report_tracking_arguments() == reference.report_tracking_arguments() == []


def test_with_tracking_on_every_command_logs_to_one_store_with_the_run_as_tags():
    on = plan({"tracking": {"backend": "mlflow"}})
    reference = plan()
    assert any(run.group == "ablation" for run in on.jobs.values())
    assert on.document() == reference.document()  # experiments.json does not change
    for run in on.jobs.values():
        words = shlex.split(on.train_command(run))
        plain = shlex.split(reference.train_command(run))
        start = words.index("--tracking")
        end = len(words) - (len(plain) - start)
        assert words[:start] + words[end:] == plain  # the tracking options, inserted, nothing else
        added = words[start:end]
        assert added[:6] == ["--tracking", "mlflow", "--tracking-project", "dcl-toy", "--tracking-uri"] + [
            "sqlite:///work_dirs/toy/mlflow.db"
        ]
        tags = dict(added[i + 1].split("=", 1) for i, word in enumerate(added) if word == "--tracking-tag")
        assert tags == {
            "preset": "toy",
            "experiment": run.experiment,
            "method": run.method,
            "model": run.model,
            "dataset": run.dataset,
            "init": run.init,
            "group": run.group,
        } | (
            {"ablation_parameter": "LOSS_WEIGHT", "ablation_value": "0.4", "ablation_base": "toy_coco_dcl"}
            if run.group == "ablation"
            else {}
        )
        assert added[added.index("--tracking-name") + 1] == f"{run.experiment}/seed{run.seed}"
    assert on.report_tracking_arguments() == [
        "--tracking", "mlflow", "--tracking-project", "dcl-toy", "--tracking-uri", "sqlite:///work_dirs/toy/mlflow.db",
        "--tracking-tag", "preset=toy",
    ]  # fmt: skip
    wandb = plan({"tracking": {"backend": "wandb", "project": "p"}})
    words = shlex.split(wandb.train_command(next(iter(wandb.jobs.values()))))
    assert "--tracking-offline" in words and "--tracking-uri" not in words
    assert wandb.report_tracking_arguments()[-2:] == ["--tracking-dir", "work_dirs/toy"]
    online = plan({"tracking": {"backend": "wandb", "mode": "online"}})
    assert "--tracking-offline" not in online.train_command(next(iter(online.jobs.values())))


@pytest.mark.parametrize(
    "tracking, message",
    [
        ({"backend": "wandb", "uri": "http://x"}, "tracking.uri: is MLflow's"),
        ({"backend": "mlflow", "mode": "offline"}, "tracking.mode: is W&B's"),
        ({"backend": "neptune"}, "tracking.backend: 'neptune' is not one of"),
        ({"backend": "mlflow", "experiment": "x"}, "tracking: unknown key 'experiment'"),
    ],
)
def test_bad_tracking_sections_are_refused(tracking, message):
    with pytest.raises(InputError, match="invalid toy.yaml") as error:
        plan({"tracking": tracking})
    assert message in str(error.value)


def test_tracking_options_are_checked_and_recorded_in_the_command():
    from dcl import tracking
    from dcl.training.options import add_arguments, command_line, take_trailing_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5", "--tracking", "wandb", "--tracking-tag", "a=b=c"]
    args = parser.parse_args(argv + ["--tracking-offline"])
    take_trailing_options(args)
    options = tracking.options_from_args(args)
    assert options == tracking.TrackingOptions(backend="wandb", offline=True, tags=(("a", "b=c"),))
    assert command_line(args) == [
        "dcl", "train", "--config-file", "x.yaml", "--num-gpus", "1", "--tracking", "wandb", "--tracking-offline",
        "--tracking-tag", "a=b=c", "SOLVER.MAX_ITER", "5",
    ]  # fmt: skip
    for bad, message in [
        (["--tracking", "wandb", "--tracking-uri", "u"], "--tracking-uri is MLflow's"),
        (["--tracking", "mlflow", "--tracking-offline"], "--tracking-offline is W&B's"),
        (["--tracking-project", "p"], "--tracking-project needs --tracking"),
    ]:
        with pytest.raises(InputError, match=message):
            tracking.options_from_args(parser.parse_args(["--config-file", "x.yaml", *bad]))
    assert tracking.options_from_args(parser.parse_args(["--config-file", "x.yaml"])) is None


def test_without_tracking_no_tracker_library_is_imported(toy_datasets, tmp_path):
    """`dcl train` (a dry run: config, datasets, model) and `dcl plan` import neither wandb nor mlflow."""
    probe = (
        "import sys\n"
        "from dcl.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert code == 0, code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'mlflow'))\n"
        "print('LOADED', loaded)\n"
    )
    env = tracker_env(toy_datasets, tmp_path / "home")
    for argv in (
        ["train", "--dry-run", "--config-file", TOY_COCO, "OUTPUT_DIR", str(tmp_path / "out")],
        ["plan", str(CONFIGS / "toy.yaml"), "--commands"],
    ):
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "LOADED []" in result.stdout, result.stdout[-2000:]


# ----------------------------------------------------------------------------- the toy DAG
@pytest.mark.e2e
def test_toy_dag_with_mlflow_tracking_logs_every_training_as_metrics_json(tmp_path):
    """A reduced toy matrix (one COCO baseline, one Cityscapes DCL run, 8 iterations with a periodic
    evaluation) run by Snakemake with `tracking: mlflow`: every training is one FINISHED run of the
    preset's local store, tagged with its experiment, and its numbers are its metrics.json."""
    from mlflow.tracking import MlflowClient

    config = yaml.safe_load((CONFIGS / "toy.yaml").read_text())
    keep = {"toy_coco_baseline", "toy_cityscapes_dcl"}
    config["experiments"] = [e | {"seeds": [0]} for e in config["experiments"] if e["name"] in keep]
    config["ablations"] = []
    config["train_overrides"] = {"SOLVER.MAX_ITER": 8, "SOLVER.STEPS": [6], "SOLVER.WARMUP_ITERS": 2}
    config["train_overrides"] |= {"TEST.EVAL_PERIOD": 4, "SOLVER.CHECKPOINT_PERIOD": 4}
    config["tracking"] = {"backend": "mlflow"}
    (tmp_path / "tracked.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    for variable in ("DETECTRON2_DATASETS", "DCL_TOY_DATASETS", "DCL_WEIGHTS_DIR", "SBATCH_PARTITION"):
        env.pop(variable, None)
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--profile", str(REPO / "profiles" / "local"), "--cores", "2", "--configfile", "tracked.yaml"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/work_dirs/toy/mlflow.db")
    experiment = client.get_experiment_by_name("dcl-toy")
    everything = client.search_runs([experiment.experiment_id])
    runs = {run.data.tags["experiment"]: run for run in everything if run.data.tags.get("kind") != "report"}
    assert set(runs) == keep
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.info.run_name == f"{name}/seed0"
        assert run.data.tags["seed"] == "0" and run.data.tags["preset"] == "toy"
        results = tmp_path / "results" / "toy" / "runs" / name / "seed0"
        assert read_json(results / "run.json")["status"] == "finished"
        logged = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics
        }
        assert_same_series(logged, metrics_json_series(results))  # the copy the report reads
        assert [step for step, _ in logged["segm/AP"]] == [3, 8]
    assert "cityscapes/AP" in runs["toy_cityscapes_dcl"].data.metrics
    assert runs["toy_cityscapes_dcl"].data.tags["method"] == "dcl"
    # dcl report logged its tables and figures to a run of its own.
    (report,) = [run for run in everything if run.data.tags.get("kind") == "report"]
    assert report.info.status == "FINISHED" and report.info.run_name == "report"
    folders = {item.path: item for item in client.list_artifacts(report.info.run_id)}
    assert {"tables", "figures", "README.md"} <= set(folders)
    tables = {Path(item.path).name for item in client.list_artifacts(report.info.run_id, "tables")}
    assert "main_results.md" in tables and "run_inventory.csv" in tables
    figures = {Path(item.path).name for item in client.list_artifacts(report.info.run_id, "figures")}
    assert "training_curves.png" in figures
