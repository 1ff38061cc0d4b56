"""The toy pipeline on a real Slurm cluster, through ``snakemake --profile slurm``, with faults.

Every test runs the repository's workflow exactly as a user on a login node does: a copy of the
workflow files (Snakefile, workflow/, configs/, the ``slurm/`` profile, profiles/default) in a
temporary directory, ``snakemake --profile slurm`` from there, partition and account from
``$SBATCH_PARTITION`` / ``$SBATCH_ACCOUNT``. The cluster is the single-node one that
``start-slurm.sh`` starts (conftest.py). Test-only command-line settings, on top of the profiles:
a 2 s first status check (the plugin's default is 40 s) and per-rule CPUs/memory that fit a
2-core node (the workflow profile's values are for GPU nodes). Nothing else is overridden.

What is checked against what:
  * Snakemake's own log (which jobs were local, which were submitted with which Slurm job id)
    against slurmctld's job completion log (what Slurm really ran: state, partition, account,
    time limit, memory, working directory), and against ``run.json``'s ``slurm.job_id``, which
    ``dcl train`` reads from the job's environment.
  * Resumption against ``run.json``'s ``attempts`` (each attempt starts at the iteration the
    previous one checkpointed) and against detectron2's own log in OUTPUT_DIR (where each
    attempt started training, which stop signal dcl train received), never against a number
    the test computed.

The faults: scancel of a running training job (Snakemake's retry resumes it), loss of the login
session (head Snakemake killed, its job cancelled, lock removed, same command again), a time
limit with Slurm's pre-timeout signal, a rule failing on bad input (--keep-going), and two
invocations at once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dcl.io import read_json
from instance_fixtures import assert_nested_close
from instance_fixtures import default_sigint

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
ACCOUNT = "dcl-ci"  # any name: without an accounting database Slurm records it unchecked
# Top-level entries of the repository that are not part of running the workflow.
NOT_WORKFLOW = {
    ".git",
    ".venv",
    ".snakemake",
    ".pytest_cache",
    ".ci",
    "datasets",
    "work_dirs",
    "weights",
    "logs",
    "results",
    "tests",
    "benchmarks",
    "docs",
    "dcl",
    "tools",
}

# The shared toy run: the whole toy DAG (5 trainings) with a short schedule.
TOY_OVERRIDES = "train_overrides={SOLVER.MAX_ITER: 20, SOLVER.WARMUP_ITERS: 5}"
# dcl train records its iteration in run.json every 20 iterations (as detectron2's writers).
RECORD_PERIOD = 20
RUN_TIMEOUT_S = 900
TOY_RUN_DIRS: list[Path] = []  # the shared toy run's directory, once it has run


# ----------------------------------------------------------------------------- helpers


def jobcomp_records(path: Path) -> dict[str, dict[str, str]]:
    """slurmctld's job completion log (jobcomp/filetxt): one ``Key=Value ...`` line per job."""
    records = {}
    if path.exists():
        for line in path.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                records[fields["JobId"]] = fields
    return records


def slurm_job_records(cluster, job_ids, timeout_s: float = 30.0) -> dict[str, dict[str, str]]:
    """The completion records of ``job_ids``; waits for slurmctld to write them (it does so when
    the job has finished, which Snakemake may notice a moment earlier)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = jobcomp_records(cluster.jobcomp_log)
        missing = [job for job in job_ids if job not in records]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"jobs {missing} are not in Slurm's job completion log {cluster.jobcomp_log}"
    return {job: records[job] for job in job_ids}


@dataclass
class SnakemakeJob:
    """One job block of Snakemake's log (``rule x:`` or ``localrule x:``)."""

    rule: str
    local: bool
    jobid: int
    wildcards: dict[str, str] = field(default_factory=dict)
    resources: str = ""


@dataclass
class SnakemakeRun:
    """A finished ``snakemake`` invocation and what its log says."""

    workdir: Path
    returncode: int
    output: str
    seconds: float

    @property
    def slurm_run_id(self) -> str:
        match = re.search(r"SLURM run ID: (\S+)", self.output)
        assert match, f"no 'SLURM run ID' in Snakemake's log:\n{self.tail()}"
        return match.group(1)

    def jobs(self) -> list[SnakemakeJob]:
        jobs, current = [], None
        for line in self.output.splitlines():
            header = re.match(r"^(local)?rule (\w+):$", line)
            if header:
                current = SnakemakeJob(rule=header.group(2), local=bool(header.group(1)), jobid=-1)
                jobs.append(current)
                continue
            if current is None:
                continue
            item = re.match(r"^    (\w+): (.*)$", line)
            if not item:
                current = None
                continue
            key, value = item.groups()
            if key == "jobid":
                current.jobid = int(value)
            elif key == "wildcards":
                current.wildcards = dict(pair.split("=", 1) for pair in value.split(", "))
            elif key == "resources":
                current.resources = value
        return jobs

    def submissions(self) -> list[tuple[int, str, Path]]:
        """(Snakemake job id, Slurm job id, Slurm log) of every sbatch submission, in order."""
        return [
            (int(jobid), slurm_id, Path(log))
            for jobid, slurm_id, log in re.findall(
                r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", self.output
            )
        ]

    def slurm_ids_of(self, rule: str, **wildcards: str) -> list[str]:
        """Slurm job ids of the submissions of one rule's job (several when it was retried)."""
        jobids = {
            job.jobid
            for job in self.jobs()
            if job.rule == rule and not job.local and all(job.wildcards.get(k) == v for k, v in wildcards.items())
        }
        return [slurm_id for jobid, slurm_id, _ in self.submissions() if jobid in jobids]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def copy_workflow(destination: Path) -> Path:
    """A user's checkout without results: the files ``snakemake --profile slurm`` reads."""
    destination.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name in NOT_WORKFLOW or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir():
            shutil.copytree(
                entry, destination / entry.name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(entry, destination / entry.name, follow_symlinks=False)
    # The small data the workflow reads from results/ (published numbers), not results of a run.
    (destination / "results").mkdir()
    for entry in (REPO / "results").iterdir():
        if entry.is_file():
            shutil.copy2(entry, destination / "results" / entry.name)
    return destination


def copy_run(source: Path, destination: Path) -> Path:
    """A copy of a workflow directory after a run, with its Snakemake metadata and mtimes, so
    Snakemake in the copy sees exactly what it saw in the original (minus locks and the
    invocations' output)."""

    def ignore(directory, names):
        directory = Path(directory)
        if directory == source:
            return [name for name in names if name.endswith(".out")]  # the invocations' output
        if directory == source / ".snakemake":
            return ["locks"]
        return []

    shutil.copytree(source, destination, symlinks=True, ignore=ignore)
    return destination


def cluster_test_settings(workdir: Path, extra_resources: tuple[str, ...] = ()) -> list[str]:
    """Test-only command-line settings (see the module docstring).

    ``--set-resources`` on the command line replaces the workflow profile's list as a whole, so
    its entries are repeated here, only shrunk to the 2-core, 24 GB test node."""
    profile = yaml.safe_load((workdir / "profiles/default/config.yaml").read_text()) or {}
    resources = []
    for rule, values in (profile.get("set-resources") or {}).items():
        for key, value in values.items():
            if key == "cpus_per_task":
                value = 1
            elif key == "mem_mb":
                value = min(int(value), 2000)
            resources.append(f"{rule}:{key}={value}")
    threads = [f"{rule}=1" for rule in (profile.get("set-threads") or {})]
    settings = ["--slurm-init-seconds-before-status-checks", "2"]
    if resources or extra_resources:
        settings += ["--set-resources", *resources, *extra_resources]
    if threads:
        settings += ["--set-threads", *threads]
    return settings


def user_env(cluster) -> dict[str, str]:
    """A login-node shell: SLURM_CONF, the venv on PATH, partition and account for the profile."""
    env = {
        k: v for k, v in cluster.env.items() if not (k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF")
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        SBATCH_PARTITION=cluster.partition,
        SBATCH_ACCOUNT=ACCOUNT,
    )
    return env


def start_snakemake(workdir: Path, args: list[str], env: dict[str, str], log_name: str = "snakemake.out"):
    log = open(workdir / log_name, "w")
    process = subprocess.Popen(
        [SNAKEMAKE, *args],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=default_sigint,  # the SIGINT finish_snakemake may send must reach Python
    )
    process.log_path = workdir / log_name
    process.started = time.monotonic()
    log.close()
    return process


def finish_snakemake(workdir: Path, process, timeout_s: float = RUN_TIMEOUT_S) -> SnakemakeRun:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # Snakemake cancels its Slurm jobs on SIGINT
        process.wait(timeout=60)
        pytest.fail(f"snakemake did not finish in {timeout_s} s:\n{process.log_path.read_text()[-5000:]}")
    return SnakemakeRun(workdir, process.returncode, process.log_path.read_text(), time.monotonic() - process.started)


def run_snakemake(workdir: Path, args: list[str], env: dict[str, str], **kwargs) -> SnakemakeRun:
    return finish_snakemake(workdir, start_snakemake(workdir, args, env, **kwargs))


def dry_run(workdir: Path, args: list[str], env: dict[str, str]) -> SnakemakeRun:
    """``snakemake ARGS --dry-run`` in ``workdir``: what it would do, nothing submitted."""
    dry = subprocess.run(
        [SNAKEMAKE, *args, "--dry-run"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    return SnakemakeRun(workdir, dry.returncode, dry.stdout + dry.stderr, 0.0)


def wait_for(condition, what: str, timeout_s: float, process=None, interval_s: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail on timeout or if
    ``process`` (the snakemake under test) ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(
                f"snakemake ended (exit {process.returncode}) while waiting for {what}:\n"
                f"{process.log_path.read_text()[-5000:]}"
            )
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def training_progress(run_json: Path, at_least: int, attempts: int):
    """run.json once the ``attempts``-th attempt is running and has recorded ``at_least``
    iterations; else None."""
    try:
        record = read_json(run_json)
    except (OSError, ValueError):
        return None  # not written yet (it is replaced atomically, so never half-written)
    if (
        record.get("status") == "running"
        and len(record.get("attempts", [])) == attempts
        and (record.get("iteration") or 0) >= at_least
    ):
        return record
    return None


def fault_config(workdir: Path, name: str, experiment: str, overrides: dict, **settings) -> Path:
    """A workflow config of one's own: the toy preset reduced to one experiment, one seed and no
    ablation, with its own schedule (and other top-level ``settings``). The preset name gives it
    its own results/, work_dirs/ and logs/."""
    config = yaml.safe_load((workdir / "configs/toy.yaml").read_text())
    config.update(settings)
    config["defaults"]["seeds"] = [0]
    config["preset"] = name
    config["experiments"] = [e for e in config["experiments"] if e["name"] == experiment]
    config["ablations"] = []
    config["train_overrides"] = overrides
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_attempts_chain(record: dict, statuses: list[str]) -> None:
    """Each attempt started at the iteration the previous one ended (checkpointed) at."""
    attempts = record["attempts"]
    assert [a["status"] for a in attempts] == statuses, attempts
    assert attempts[0]["start_iter"] == 0, attempts
    for before, after in zip(attempts, attempts[1:]):
        assert before["end_iter"] > before["start_iter"], f"an attempt made no progress: {attempts}"
        assert after["start_iter"] == before["end_iter"], f"not resumed from the checkpoint: {attempts}"
    assert attempts[-1]["end_iter"] == record["max_iter"] == record["iteration"], attempts


def assert_no_stale_locks(workdir: Path) -> None:
    locks = workdir / ".snakemake/locks"
    assert not locks.exists() or not any(locks.iterdir()), f"locks left behind: {list(locks.iterdir())}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("slurm") / "workflow")


@pytest.fixture(scope="session")
def toy_run(slurm_cluster, workflow_copy, tmp_path_factory) -> SnakemakeRun:
    """The whole toy DAG through ``snakemake --profile slurm``, once for all tests."""
    workdir = copy_run(workflow_copy, tmp_path_factory.mktemp("slurm") / "toy")
    # One seed per experiment (configs/toy.yaml trains two: the local toy DAG test covers those):
    # every rule and kind of run still goes through Slurm, in 37 jobs instead of 59.
    (workdir / "one_seed.yaml").write_text("defaults:\n  seeds: [0]\n")
    args = [
        "--profile",
        "slurm",
        "--config",
        "preset=toy",
        TOY_OVERRIDES,
        "--configfile",
        "one_seed.yaml",
        *cluster_test_settings(workdir),
    ]
    run = run_snakemake(workdir, args, user_env(slurm_cluster))
    run.args = args
    TOY_RUN_DIRS.append(workdir)
    return run


@pytest.fixture()
def completed_toy(toy_run, tmp_path) -> Path:
    """A private copy of the completed toy run, for a test that damages it."""
    assert toy_run.returncode == 0, f"the toy run failed:\n{toy_run.tail()}"
    return copy_run(toy_run.workdir, tmp_path / "toy")


# ----------------------------------------------------------------------------- the pipeline


def test_toy_pipeline_runs_every_non_local_job_through_sbatch(toy_run, slurm_cluster):
    assert toy_run.returncode == 0, f"snakemake --profile slurm failed:\n{toy_run.tail()}"
    jobs = toy_run.jobs()
    remote = [job for job in jobs if not job.local]
    local = {job.rule for job in jobs if job.local}
    assert {job.rule for job in remote} == {"train", "evaluate", "evaluate_occ", "errors"}, jobs
    assert local == {"toy_data", "check_dataset", "plan", "report", "all"}, local

    # Every non-local job was submitted once, and every submission is one of those jobs.
    submissions = toy_run.submissions()
    assert sorted(jobid for jobid, _, _ in submissions) == sorted(job.jobid for job in remote)
    # trainings (5 Mask R-CNN, 2 RefineMask); evaluations; on the toy COCO-OCC (COCO runs);
    # errors + errors_legacy (+ both on OCC)
    assert len(remote) == 7 + 7 + 3 + 20
    slurm_ids = [slurm_id for _, slurm_id, _ in submissions]
    assert len(set(slurm_ids)) == len(slurm_ids)

    # Slurm ran exactly these jobs for this invocation (its job name is Snakemake's run id),
    # all to completion, in the partition and account from the environment, in the workdir.
    records = slurm_job_records(slurm_cluster, slurm_ids)
    of_this_run = {
        job for job, r in jobcomp_records(slurm_cluster.jobcomp_log).items() if r["Name"] == toy_run.slurm_run_id
    }
    assert of_this_run == set(slurm_ids)
    for record in records.values():
        assert record["JobState"] == "COMPLETED", record
        assert record["ExitCode"] == "0:0", record
        assert record["Partition"] == slurm_cluster.partition, record
        assert record["Account"] == ACCOUNT, record
        assert Path(record["WorkDir"]).resolve() == toy_run.workdir.resolve(), record

    # The training jobs asked Slurm for the run's resources from configs/toy.yaml.
    toy = yaml.safe_load((toy_run.workdir / "configs/toy.yaml").read_text())["defaults"]["resources"]
    for slurm_id in toy_run.slurm_ids_of("train"):
        record = records[slurm_id]
        assert record["TimeLimit"] == str(toy["runtime"]), record
        assert f"mem={toy['mem_mb']}M" in record["Tres"] and f"cpu={toy['cpus']}" in record["Tres"], record


def test_toy_pipeline_outputs_are_complete(toy_run, slurm_cluster):
    assert toy_run.returncode == 0, f"snakemake --profile slurm failed:\n{toy_run.tail()}"
    results = toy_run.workdir / "results/toy"
    plan = read_json(results / "experiments.json")
    # An ablation value equal to its base experiment's reuses that run (same run_dir).
    trained = {run["run_dir"]: run for run in plan["runs"] if run["kind"] == "train"}
    assert len(trained) == 7, sorted(trained)
    for run_dir, run in trained.items():
        folder = results / run_dir
        record = read_json(folder / "run.json")
        assert record["status"] == "finished" and record["exit_code"] == 0, record
        assert record["iteration"] == record["max_iter"] == 20, record
        # dcl train ran inside the Slurm job Snakemake submitted for this run.
        wildcards = {"experiment": Path(run_dir).parent.name, "seed": str(run["seed"])}
        assert [record["slurm"]["job_id"]] == toy_run.slurm_ids_of("train", **wildcards), record
        evaluation = read_json(folder / "eval.json")
        assert evaluation["num_images"] == 16, evaluation
        assert 0.0 <= evaluation["segm"]["AP"] <= 100.0, evaluation
        for name in ("errors.json", "errors_legacy.json"):
            assert set(read_json(folder / name)["types"]) == {"fFP", "bFP", "FN"}
        assert (folder / "metrics.json").read_text().strip()
    assert (results / "README.md").read_text().strip()
    # Successful jobs' Slurm logs are removed by the plugin; no job failed, so none is left.
    assert not list((toy_run.workdir / "logs/slurm").rglob("*.log"))
    assert_no_stale_locks(toy_run.workdir)

    # The state on disk is complete and consistent: a dry run of the same command has nothing to do.
    dry = dry_run(toy_run.workdir, toy_run.args, user_env(slurm_cluster))
    assert dry.returncode == 0, dry.output
    assert "Nothing to be done" in dry.output, dry.output


# ----------------------------------------------------------------------------- faults


def scancel(cluster, job_id: str) -> None:
    subprocess.run(["scancel", job_id], env=cluster.env, check=True, timeout=30)


def job_is_active(cluster, job_id: str) -> bool:
    states = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--jobs", job_id, "-o", "%T"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    return bool(states) and states[0] in {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"}


def training_starts(log_txt: Path) -> list[int]:
    """detectron2's own account of where each training attempt started (OUTPUT_DIR/log.txt)."""
    return [int(n) for n in re.findall(r"Starting training from iteration (\d+)", log_txt.read_text())]


def stop_messages(log_txt: Path) -> list[str]:
    """The stop signals dcl train received while training, from its log in OUTPUT_DIR."""
    return re.findall(r"received (SIG\w+): stopping after the current iteration", log_txt.read_text())


@pytest.fixture()
def fault_workdir(workflow_copy, tmp_path) -> Path:
    """A fresh copy of the workflow, with the toy datasets of the shared toy run if it already
    made them (Snakemake then has no reason to make them again; else the local rule does)."""
    workdir = copy_run(workflow_copy, tmp_path / "workflow")
    for toy_workdir in TOY_RUN_DIRS:
        if (toy_workdir / "datasets").is_dir():
            shutil.copytree(toy_workdir / "datasets", workdir / "datasets", symlinks=True)
            break
    return workdir


def test_cancelled_training_resumes_from_its_checkpoint(slurm_cluster, fault_workdir):
    """scancel while Snakemake watches: its retry resumes. Then the login session is lost (head
    Snakemake killed, its running job cancelled): after --unlock the same command resumes again
    and completes the pipeline."""
    workdir, env = fault_workdir, user_env(slurm_cluster)
    fault_config(
        workdir, "toy_cancel", "toy_coco_baseline", {"SOLVER.MAX_ITER": 3 * RECORD_PERIOD, "SOLVER.WARMUP_ITERS": 5}
    )
    args = ["--profile", "slurm", "--configfile", "toy_cancel.yaml", *cluster_test_settings(workdir)]
    output_dir = workdir / "work_dirs/toy_cancel/toy_coco_baseline/seed0"
    run_json = output_dir / "run.json"

    head = start_snakemake(workdir, args, env, log_name="first.out")
    try:
        first = wait_for(
            lambda: training_progress(run_json, RECORD_PERIOD, attempts=1),
            "the first attempt to train 20 iterations",
            600,
            head,
        )
        scancel(slurm_cluster, first["slurm"]["job_id"])
        second = wait_for(
            lambda: training_progress(run_json, 2 * RECORD_PERIOD, attempts=2),
            "Snakemake's retry to train up to iteration 40",
            600,
            head,
        )
        assert second["slurm"]["job_id"] != first["slurm"]["job_id"]
        # The login node goes away: the head dies without cleaning up; its job runs on.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        assert job_is_active(slurm_cluster, second["slurm"]["job_id"])
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
    # What docs/cluster.md tells the user to do after an outage: cancel the lost run's jobs ...
    scancel(slurm_cluster, second["slurm"]["job_id"])
    wait_for(lambda: not job_is_active(slurm_cluster, second["slurm"]["job_id"]), "the cancelled job to end", 120)
    # ... the same command refuses while the dead head's lock is there ...
    locked = run_snakemake(workdir, args, env, log_name="locked.out")
    assert locked.returncode != 0 and "cannot be locked" in locked.output, locked.tail()
    assert not locked.submissions()
    # ... so unlock, and run the same command again.
    unlock = run_snakemake(workdir, [*args, "--unlock"], env, log_name="unlock.out")
    assert unlock.returncode == 0, unlock.tail()
    rerun = run_snakemake(workdir, args, env, log_name="rerun.out")
    assert rerun.returncode == 0, rerun.tail()

    record = read_json(run_json)
    assert_attempts_chain(record, ["interrupted", "interrupted", "finished"])
    assert record["status"] == "finished", record
    assert training_starts(output_dir / "log.txt") == [a["start_iter"] for a in record["attempts"]]
    assert stop_messages(output_dir / "log.txt") == ["SIGTERM", "SIGTERM"]  # what scancel sends
    # Slurm's view: two cancelled jobs, then the re-run's job completed.
    first_run = SnakemakeRun(workdir, head.returncode, (workdir / "first.out").read_text(), 0.0)
    train_jobs = first_run.slurm_ids_of("train") + rerun.slurm_ids_of("train")
    assert train_jobs[:2] == [first["slurm"]["job_id"], second["slurm"]["job_id"]], train_jobs
    assert train_jobs[2] == record["slurm"]["job_id"], (train_jobs, record["slurm"])
    states = {job: r["JobState"] for job, r in slurm_job_records(slurm_cluster, train_jobs).items()}
    assert [states[job] for job in train_jobs] == ["CANCELLED", "CANCELLED", "COMPLETED"], states
    assert read_json(workdir / "results/toy_cancel/runs/toy_coco_baseline/seed0/eval.json")["num_images"] == 16
    assert (workdir / "results/toy_cancel/README.md").is_file()
    assert_no_stale_locks(workdir)


def dcl_status(workdir: Path, preset: str, env: dict[str, str]) -> dict:
    """``dcl status results/<preset> --json`` on the login node."""
    shown = subprocess.run(
        [str(VENV_BIN / "dcl"), "status", f"results/{preset}", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_status_shows_a_slurm_training_with_its_job_and_node(slurm_cluster, fault_workdir):
    """`dcl status` beside `snakemake --profile slurm`: the training is running, with its
    iteration, speed and ETA from run.json and its Slurm job and node from squeue (the executor's
    job comment names the run); once the workflow is done, finished."""
    workdir, env = fault_workdir, user_env(slurm_cluster)
    fault_config(
        workdir, "toy_status", "toy_coco_baseline", {"SOLVER.MAX_ITER": 6 * RECORD_PERIOD, "SOLVER.WARMUP_ITERS": 5}
    )
    args = ["--profile", "slurm", "--configfile", "toy_status.yaml", *cluster_test_settings(workdir)]
    run_json = workdir / "work_dirs/toy_status/toy_coco_baseline/seed0/run.json"
    head = start_snakemake(workdir, args, env, log_name="status.out")
    try:
        record = wait_for(
            lambda: training_progress(run_json, 2 * RECORD_PERIOD, attempts=1),
            "the training to record 40 iterations",
            600,
            head,
        )
        status = dcl_status(workdir, "toy_status", env)
        row = status["runs"][0]
        assert status["slurm"] is True, status
        assert (row["experiment"], row["state"], row["job_id"]) == (
            "toy_coco_baseline",
            "running",
            record["slurm"]["job_id"],
        ), row
        assert row["node"] and row["iteration"] >= 2 * RECORD_PERIOD and row["max_iter"] == 6 * RECORD_PERIOD, row
        assert row["rate"] > 0 and row["eta_s"] is not None and row["chunks"] == 1, row
    finally:
        run = finish_snakemake(workdir, head)
    assert run.returncode == 0, run.tail()
    row = dcl_status(workdir, "toy_status", env)["runs"][0]
    assert (row["state"], row["iteration"], row["chunks"]) == ("finished", 6 * RECORD_PERIOD, 1), row


def job_state(cluster, job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", "--jobs", job_id, "-o", "%T"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    return out[0] if out else ""


def chunk_progress(run_json: Path, chunk: int):
    """run.json once the ``chunk``-th attempt has recorded progress of its own, else None."""
    record = training_progress(run_json, 1, attempts=chunk)
    if record is not None and record["iteration"] > record["attempts"][-1]["start_iter"]:
        return record
    return None


def test_a_training_preempted_six_times_completes_in_requeued_chunks(slurm_cluster, fault_workdir):
    """Six pre-emptions (scancel --signal=TERM while it trains, as Slurm's pre-emption and
    pre-timeout signal do): each time dcl train checkpoints, requeues its own job (the same
    job id, so Snakemake keeps waiting) and the next chunk resumes, unattended. Slurm holds a
    requeued job for a few minutes (reason BeginTime); the test lifts that hold (as a busy
    cluster's queue wait would end) to keep the run short."""
    workdir, env = fault_workdir, user_env(slurm_cluster)
    preemptions = 6
    fault_config(
        workdir, "toy_chunks", "toy_coco_baseline", {"SOLVER.MAX_ITER": 10 * RECORD_PERIOD, "SOLVER.WARMUP_ITERS": 5}
    )
    args = ["--profile", "slurm", "--configfile", "toy_chunks.yaml", *cluster_test_settings(workdir)]
    output_dir = workdir / "work_dirs/toy_chunks/toy_coco_baseline/seed0"
    run_json = output_dir / "run.json"
    head = start_snakemake(workdir, args, env)
    try:
        job_id = None
        for chunk in range(1, preemptions + 1):
            record = wait_for(lambda chunk=chunk: chunk_progress(run_json, chunk), f"chunk {chunk} to train", 600, head)
            job_id = job_id or record["slurm"]["job_id"]
            assert record["slurm"]["job_id"] == job_id, "a chunk ran as another Slurm job"
            subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm_cluster.env, check=True, timeout=30)
            wait_for(
                lambda job_id=job_id: job_state(slurm_cluster, job_id) == "PENDING",
                f"job {job_id} to be requeued",
                300,
                head,
            )
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                env=slurm_cluster.env,
                check=True,
                timeout=30,
            )
        run = finish_snakemake(workdir, head)
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
    assert run.returncode == 0, run.tail()
    record = read_json(run_json)
    assert_attempts_chain(record, ["interrupted"] * preemptions + ["finished"])
    assert record["slurm"]["job_id"] == job_id and run.slurm_ids_of("train") == [job_id]
    assert stop_messages(output_dir / "log.txt") == ["SIGTERM"] * preemptions
    assert training_starts(output_dir / "log.txt") == [a["start_iter"] for a in record["attempts"]]
    assert "requeued for chunk 7 of at most 50" in (output_dir / "log.txt").read_text()
    assert (
        read_json(workdir / "results/toy_chunks/runs/toy_coco_baseline/seed0/run.json")["iteration"]
        == 10 * RECORD_PERIOD
    )
    assert "toy_coco_baseline" in (workdir / "results/toy_chunks/tables/run_inventory.md").read_text()


def test_a_deterministic_failure_is_submitted_twice_at_most(slurm_cluster, fault_workdir):
    """A training that fails (exit 1: here a NaN loss) is not requeued; the train rule's one
    retry submits it once more, and then the workflow fails, with the report written."""
    workdir, env = fault_workdir, user_env(slurm_cluster)
    fault_config(
        workdir,
        "toy_nan",
        "toy_coco_baseline",
        {"SOLVER.MAX_ITER": 30, "SOLVER.BASE_LR": 100000.0, "SOLVER.CLIP_GRADIENTS.ENABLED": False},
    )
    run = run_snakemake(
        workdir, ["--profile", "slurm", "--configfile", "toy_nan.yaml", *cluster_test_settings(workdir)], env
    )
    assert run.returncode != 0, run.tail()
    assert len(run.slurm_ids_of("train")) == 2, run.tail()
    record = read_json(workdir / "work_dirs/toy_nan/toy_coco_baseline/seed0/run.json")
    assert record["status"] == "failed" and "NaN" in record["error"]
    assert [a["status"] for a in record["attempts"]] == ["failed", "failed"]
    assert "failed" in (workdir / "results/toy_nan/README.md").read_text()


def workflow_signal(workdir: Path, args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """The pre-timeout signal the workflow asks Slurm for in the train rule (from a dry run):
    (``B:`` or "", signal name)."""
    dry = dry_run(workdir, args, env)
    assert dry.returncode == 0, dry.output
    extras = {
        re.search(r"slurm_extra=(.*?)(?:, \w+=|$)", job.resources).group(1) for job in dry.jobs() if job.rule == "train"
    }
    assert len(extras) == 1, extras
    match = re.search(r"--signal=(B:)?(\w+)@(\d+)", extras.pop())
    assert match, f"the train rule asks for no pre-timeout signal: {extras}"
    return match.group(1) or "", match.group(2)


def test_time_limit_signal_checkpoints_and_the_retry_resumes(slurm_cluster, fault_workdir):
    """The first attempt gets a 3-minute time limit for 400 iterations: Slurm's pre-timeout
    signal (the workflow's own, with an offset that fits in three minutes) makes dcl train
    checkpoint and stop before the limit. With max_chunks 1 it does not requeue itself (that is
    the chunk test's subject), so the train rule's retry, with a longer limit, resumes from the
    checkpoint and the pipeline completes."""
    workdir, env = fault_workdir, user_env(slurm_cluster)
    fault_config(
        workdir,
        "toy_timeout",
        "toy_coco_dcl",
        {"SOLVER.MAX_ITER": 20 * RECORD_PERIOD, "SOLVER.WARMUP_ITERS": 5},
        max_chunks=1,
    )
    base = ["--profile", "slurm", "--configfile", "toy_timeout.yaml"]
    batch_only, name = workflow_signal(workdir, [*base, *cluster_test_settings(workdir)], env)
    assert batch_only == "", "--signal=B:... reaches only the batch shell, never dcl train"
    # Slurm's time limits are whole minutes and it may send the signal up to 60 s before the
    # requested offset (measured: a 2-minute limit signalled 90 s before came 2-8 s after the
    # start, before dcl train trained). So 3 minutes, signalled 60 s before: 60-120 s after the
    # start, well after the set-up (~10 s) and well before 400 iterations are done (~0.8 s each
    # here; a 2.5 times faster machine still trains past 120 s). The retry gets 10 minutes (a
    # Snakemake resource expression, as users scale limits by attempt).
    args = [
        *base,
        *cluster_test_settings(
            workdir, ("train:runtime=3 if attempt == 1 else 10", f"train:slurm_extra='--signal={name}@60'")
        ),
    ]
    run = run_snakemake(workdir, args, env)
    assert run.returncode == 0, run.tail()

    output_dir = workdir / "work_dirs/toy_timeout/toy_coco_dcl/seed0"
    record = read_json(output_dir / "run.json")
    assert_attempts_chain(record, ["interrupted", "finished"])
    assert training_starts(output_dir / "log.txt") == [a["start_iter"] for a in record["attempts"]]
    signal_name = name if name.startswith("SIG") else f"SIG{name}"
    assert stop_messages(output_dir / "log.txt") == [signal_name], "the signal did not reach dcl train in training"
    assert "1 of at most 1 chunks used: not requeued" in (output_dir / "log.txt").read_text()
    # The first job ended on the signal inside its three minutes (FAILED with dcl train's exit code 75,
    # not killed by Slurm at the limit: TIMEOUT); the retry was a new job with the longer limit.
    first, retry = run.slurm_ids_of("train")
    assert retry == record["slurm"]["job_id"], (first, retry, record["slurm"])
    records = slurm_job_records(slurm_cluster, [first, retry])
    assert (records[first]["TimeLimit"], records[first]["JobState"]) == ("3", "FAILED"), records[first]
    assert (records[retry]["TimeLimit"], records[retry]["JobState"]) == ("10", "COMPLETED"), records[retry]
    assert read_json(workdir / "results/toy_timeout/runs/toy_coco_dcl/seed0/eval.json")["num_images"] == 16
    assert (workdir / "results/toy_timeout/README.md").is_file()


def test_bad_input_fails_its_job_only_and_the_fixed_rerun_completes(slurm_cluster, completed_toy, toy_run):
    workdir, env = completed_toy, user_env(slurm_cluster)
    bad_run = "toy_cityscapes_baseline"
    predictions = workdir / f"work_dirs/toy/{bad_run}/seed0/inference/coco_instances_results.json"
    good = predictions.read_bytes()
    predictions.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    bad_results = workdir / f"results/toy/runs/{bad_run}/seed0"
    # Independent work in the same invocation: another run's evaluation is missing.
    independent = workdir / "results/toy/runs/toy_coco_baseline/seed0/eval.json"
    independent.unlink()

    # The profile retries no CPU step (`retries: 0`): each failing job runs once.
    failed = run_snakemake(workdir, toy_run.args, env, log_name="failed.out")
    assert failed.returncode != 0, failed.tail()
    failed_jobs = [job for job in failed.jobs() if job.wildcards.get("experiment") == bad_run]
    assert {job.rule for job in failed_jobs} == {"evaluate", "errors"}, failed_jobs
    for job in failed_jobs:
        # The job failed in Slurm, and Snakemake names its Slurm log, which exists ...
        slurm_ids = failed.slurm_ids_of(job.rule, **job.wildcards)
        assert len(slurm_ids) == 1, slurm_ids
        records = slurm_job_records(slurm_cluster, slurm_ids)
        assert {records[sid]["JobState"] for sid in slurm_ids} == {"FAILED"}, records
        slurm_log = next(log for _, sid, log in failed.submissions() if sid == slurm_ids[-1])
        assert re.search(rf"log: .*{re.escape(str(slurm_log))} \(check log", failed.output), slurm_log
        assert slurm_log.is_file(), slurm_log
    # ... and shows the rule's log (show-failed-logs): dcl's one-line error naming the file.
    assert re.search(rf"dcl (evaluate|errors): error: .*{re.escape(predictions.name)}", failed.output), failed.tail()
    # No output of the failed jobs is left looking complete (not even the previous run's), and
    # no temporary file either: the folder holds what the training job put there, nothing else.
    analyses = {"eval.json", "errors.json", "errors_legacy.json"}
    before = {p.name for p in (toy_run.workdir / "results/toy/runs" / bad_run / "seed0").iterdir()}
    assert analyses <= before
    assert {p.name for p in bad_results.iterdir()} == before - analyses
    # The independent job still ran to completion (--keep-going).
    assert read_json(independent)["num_images"] == 16
    [independent_job] = failed.slurm_ids_of("evaluate", experiment="toy_coco_baseline")
    assert slurm_job_records(slurm_cluster, [independent_job])[independent_job]["JobState"] == "COMPLETED"
    assert_no_stale_locks(workdir)

    predictions.write_bytes(good)  # the fix
    fixed = run_snakemake(workdir, toy_run.args, env, log_name="fixed.out")
    assert fixed.returncode == 0, fixed.tail()
    # Only what was left to do ran: the bad run's three jobs (and the local report).
    rerun = sorted((job.rule, job.wildcards.get("experiment")) for job in fixed.jobs() if not job.local)
    assert rerun == [("errors", bad_run), ("errors", bad_run), ("evaluate", bad_run)], rerun
    assert read_json(bad_results / "eval.json")["num_images"] == 16
    for name in ("errors.json", "errors_legacy.json"):
        assert set(read_json(bad_results / name)["types"]) == {"fFP", "bFP", "FN"}


def test_second_invocation_refuses_while_the_first_runs(slurm_cluster, completed_toy, toy_run):
    workdir, env = completed_toy, user_env(slurm_cluster)
    # Work for one Slurm job: an analysis and the report that needs it are missing. (A missing
    # intermediate file alone is not: Snakemake does not remake it while its consumers are current.)
    missing = workdir / "results/toy/runs/toy_coco_dcl/seed0/errors_legacy.json"
    missing.unlink()
    (workdir / "results/toy/README.md").unlink()

    first = start_snakemake(workdir, toy_run.args, env, log_name="first.out")
    try:
        wait_for(
            lambda: "has been submitted with SLURM jobid" in first.log_path.read_text(),
            "the first invocation to submit its job",
            300,
            first,
        )
        second = run_snakemake(workdir, toy_run.args, env, log_name="second.out")
    finally:
        done = finish_snakemake(workdir, first)
    assert second.returncode != 0, second.tail()
    assert "cannot be locked" in second.output, second.tail()
    assert not second.submissions() and "SLURM run ID" not in second.output, second.tail()

    assert done.returncode == 0, done.tail()
    assert set(read_json(missing)["types"]) == {"fFP", "bFP", "FN"}
    assert (workdir / "results/toy/README.md").read_text().strip()
    assert len(done.submissions()) == 1
    of_first = [job for job, r in jobcomp_records(slurm_cluster.jobcomp_log).items() if r["Name"] == done.slurm_run_id]
    assert of_first == [done.submissions()[0][1]]
    assert_no_stale_locks(workdir)
    dry = dry_run(workdir, toy_run.args, env)
    assert "Nothing to be done" in dry.output, dry.output


# ----------------------------------------------------------------------------- several tasks per job


def test_a_slurm_step_of_two_tasks_trains_as_two_machines(slurm_cluster, toy_datasets, tmp_path):
    """`srun --ntasks-per-node=2 dcl train --num-gpus 1` in one sbatch job: each task is a machine
    of one worker, ranked by its Slurm task id, meeting at the first host of the step - the layout
    a multi-node job uses, derived by dcl train from Slurm's environment, not from the command
    line. The two ranks train as those of `dcl train --num-gpus 2` on one machine: same losses,
    same evaluation."""
    train = [
        "train",
        "--config-file",
        str(REPO / "configs/toy_coco_mask_rcnn_R18_FPN.yaml"),
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.WARMUP_ITERS",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "3",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    ]
    env = {**user_env(slurm_cluster), "DCL_TOY_DATASETS": str(toy_datasets)}
    local = subprocess.run(
        [str(VENV_BIN / "dcl"), *train, "--num-gpus", "2", "OUTPUT_DIR", str(tmp_path / "local")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert local.returncode == 0, local.stderr[-3000:]

    script = tmp_path / "job.sh"
    command = [str(VENV_BIN / "dcl"), *train, "--num-gpus", "1", "OUTPUT_DIR", str(tmp_path / "slurm")]
    script.write_text(f"#!/bin/bash\nexec srun --kill-on-bad-exit=1 {shlex.join(command)}\n")
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--mem=6000",
            "--time=15",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/job.log",
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: not job_is_active(slurm_cluster, job_id), "the two-task job to end", RUN_TIMEOUT_S)
    finally:
        scancel(slurm_cluster, job_id)  # nothing to cancel unless the wait timed out
    log = (tmp_path / "job.log").read_text()
    record = slurm_job_records(slurm_cluster, [job_id])[job_id]
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), (record, log[-3000:])

    out = tmp_path / "slurm"
    run = read_json(out / "run.json")
    assert run["status"] == "finished" and run["slurm"]["job_id"] == job_id
    # The job id picks the port (the same for every task of the job); rank 0 records the layout.
    assert run["distributed"] == {
        "num_machines": 2,
        "machine_rank": 0,
        "machines_per_node": 2,
        "source": "slurm",
        "dist_url": f"tcp://{record['NodeList']}:{20000 + int(job_id) % 20000}",
        "num_gpus_per_machine": 1,
    }
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()

    def last_losses(folder):
        lines = [json.loads(line) for line in (folder / "metrics.json").read_text().splitlines()]
        last = [line for line in lines if "total_loss" in line][-1]  # the last training iteration's
        return {key: value for key, value in last.items() if key.startswith("loss_") or key == "total_loss"}

    reference = last_losses(tmp_path / "local")
    assert reference
    assert_nested_close(last_losses(out), reference, 1e-4, where="losses")
    evaluation = read_json(out / "inference" / "detectron2_eval.json")["toy_coco_val"]
    expected = read_json(tmp_path / "local" / "inference" / "detectron2_eval.json")["toy_coco_val"]
    assert_nested_close(evaluation, expected, 1e-3, 1e-3, where="evaluation")  # None: a COCO -1 (no GT of that size)
