"""Nothing lost, nothing runaway (README, "Reliability"): each guarantee checked end to end, as a
subprocess with a timeout, asserting the exit code, the one-line message and that no input changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instance_fixtures import make_random
from toy_training import dcl_train

REPO = Path(__file__).resolve().parents[1]


def dcl(*args, cwd=None, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcl", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def one_line_error(done: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dcl {command}: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def instances(tmp_path):
    gt, predictions = make_random(seed=3, num_images=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "gt.json", tmp_path / "link.json")
    return tmp_path


@pytest.mark.parametrize("command", ["evaluate", "errors"])
@pytest.mark.parametrize(
    "output, what",
    [
        ("p.json", "predictions"),
        ("gt.json", "ground truth"),
        ("sub/../gt.json", "ground truth"),
        ("link.json", "ground truth"),
    ],
)
def test_an_output_never_overwrites_an_input(instances, command, output, what):
    before = {p.name: p.read_bytes() for p in instances.glob("*.json")}
    done = dcl(command, "p.json", "-a", "gt.json", "-o", output, cwd=instances)
    one_line_error(done, command, f"output {output} is the {what}", "choose another output")
    assert {p.name: p.read_bytes() for p in instances.glob("*.json")} == before


def test_plan_never_overwrites_its_config(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_bytes((REPO / "configs" / "toy.yaml").read_bytes())
    done = dcl("plan", config, "-o", config, "--repo-root", REPO, cwd=tmp_path)
    one_line_error(done, "plan", "is the config file 1")
    assert config.read_bytes() == (REPO / "configs" / "toy.yaml").read_bytes()


def toy_train(out: Path, *extra: str) -> list[str]:
    return dcl_train(out, *("SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "1", "DATASETS.TEST", "()"), *extra)


@pytest.mark.e2e
def test_two_trainings_in_one_output_dir_exactly_one_trains(toy_datasets, tmp_path):
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    first = subprocess.Popen(
        toy_train(out, "SOLVER.MAX_ITER", "400", "--resume"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "run.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        record_before = (out / "run.json").read_text()
        started = time.monotonic()
        second = subprocess.run(
            toy_train(out, "SOLVER.MAX_ITER", "400", "--resume"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        one_line_error(second, "train", f"OUTPUT_DIR {out} is in use by another process", f"pid {first.pid}")
        assert time.monotonic() - started < 60  # at once: it waited for nothing
        assert first.poll() is None  # the first goes on
        record = json.loads((out / "run.json").read_text())
        assert [a["status"] for a in record["attempts"]] == ["running"], record_before
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 75  # interrupted by us, checkpointed
    # Its process gone, the folder is free again (the kernel released the lock): a resume runs.
    done = subprocess.run(
        toy_train(out, "SOLVER.MAX_ITER", "1", "--resume"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def limited_memory(megabytes: int):
    """A child's address-space ceiling: a runaway allocation fails in it, not in the machine."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (megabytes << 20, megabytes << 20))

    return apply


@pytest.mark.parametrize(
    "options, message",
    [
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH 0 must be a positive multiple of the 1 worker(s)"),
        (["SOLVER.IMS_PER_BATCH", "-4"], "SOLVER.IMS_PER_BATCH -4 must be a positive multiple"),
        (["--num-gpus", "-1"], "--num-gpus must be at least 1, got -1"),
        (["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER -5 must be at least 1"),
        (["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "(1,)"], "SOLVER.STEPS (1,) must be positive, increase strictly"),
        (["DATALOADER.NUM_WORKERS", "-2"], "DATALOADER.NUM_WORKERS -2 must be 0 or more"),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD 0 must be at least 1"),
    ],
)
def test_config_values_that_cannot_run_fail_in_a_dry_run(toy_datasets, tmp_path, options, message):
    """Checked before anything is built, the key named, as a real start checks them."""
    check_refused(toy_datasets, tmp_path, [*options, "--dry-run"], message)


def test_a_zero_batch_ends_at_once_not_by_filling_the_memory(toy_datasets, tmp_path):
    """A real start, under a 3 GB ceiling: the zero batch used to loop in the sampler, allocating
    until the kernel killed it (23 GB, 29 minutes)."""
    check_refused(toy_datasets, tmp_path, ["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH 0 must be")


def check_refused(toy_datasets, tmp_path, options, message):
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    command = toy_train(tmp_path / "out", *options)
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limited_memory(3000)
    )
    one_line_error(done, "train", message)
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_zero_batch_never_loops_in_the_sampler():
    from dcl.training.sampler import ResumableTrainingSampler

    for size, batch in ((10, 0), (0, 2)):
        with pytest.raises(ValueError, match="batch of at least 1"):
            ResumableTrainingSampler(size, batch)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"<html><body>Sign in</body></html>", "not a PyTorch checkpoint"),
        (b"root:x:0:0:root:/root:/bin/bash\n", "cannot be loaded (corrupted, or not a checkpoint?)"),
    ],
)
def test_a_dry_run_loads_the_weights_as_a_start_would(toy_datasets, tmp_path, content, message):
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    (tmp_path / "w.pth").write_bytes(content)
    done = subprocess.run(
        toy_train(tmp_path / "out", "MODEL.WEIGHTS", str(tmp_path / "w.pth"), "--dry-run"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(done, "train", f"weights file {tmp_path / 'w.pth'}", message)


def on_small_filesystem(command, folder: Path, size_kb: int, *, read_only=False, after="", cwd=None):
    """``command`` run with a fresh tmpfs of ``size_kb`` (0: full; read-only if asked) mounted on ``folder``,
    in a mount namespace of its own (``unshare``, also without root where user namespaces are
    allowed): a really full or read-only file system. ``after``: shell run there once it ended
    (its output follows the command's), the exit code stays the command's."""
    options = f"size={max(size_kb, 4)}k" + (",ro" if read_only else "")
    fill = 'cat /dev/zero > "$0/.fill" 2>/dev/null;' if size_kb == 0 else ""
    script = f'mount -t tmpfs -o {options} tmpfs "$0" || exit 99; {fill} "$@"; code=$?; {after or ":"}; exit $code'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), *map(str, command)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}")
    return done


@pytest.mark.parametrize("command", ["evaluate", "errors"])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_no_half_file(instances, command, read_only):
    out = instances / "out"
    out.mkdir()
    done = on_small_filesystem(
        [sys.executable, "-m", "dcl", command, "p.json", "-a", "gt.json", "-o", "out/result.json"],
        out,
        0 if not read_only else 64,
        read_only=read_only,
        after="ls -A out | grep -vx .fill >&2",
        cwd=instances,
    )
    reason = "Read-only file system" if read_only else "No space left on device"
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"dcl {command}: error: cannot write out/result.json: {reason}", done.stderr
    assert lines[1:] == []  # `ls -A out`: no temporary, no half file


@pytest.mark.e2e
def test_a_training_on_a_full_disk_says_so_and_records_why(toy_datasets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = on_small_filesystem(
        ["env", f"DCL_TOY_DATASETS={toy_datasets}", "OMP_NUM_THREADS=1"]
        + toy_train(out, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1"),
        out,
        8 * 1024,  # a checkpoint of the toy model is ~100 MB
        after=f'echo "#run.json"; cat "{out}/run.json"; echo "#files"; ls -A "{out}"',
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dcl train: error: cannot write checkpoint ") and "model_0000000.pth" in last, last
    assert "Traceback" not in done.stderr
    record_text, _, listing = done.stdout.rpartition("#run.json\n")[2].partition("#files\n")
    record = json.loads(record_text)
    assert record["status"] == "failed" and "cannot write checkpoint" in record["error"]
    assert not [name for name in listing.split() if name.endswith(".pth")]  # nothing half-written


def alias_bomb(levels: int = 9) -> str:
    """YAML whose aliases expand to 9**levels values (a few hundred bytes of text)."""
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, reason",
    [
        (alias_bomb(), "more than 1,000,000 values once its aliases are expanded"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 100 levels"),
        ("a: &a [1, *a]\n", "contains itself"),
    ],
)
def test_yaml_that_would_explode_is_refused_in_one_line(tmp_path, text, reason):
    (tmp_path / "config.yaml").write_text(text)
    assert dcl("plan", REPO / "configs" / "toy.yaml", "-o", tmp_path / "results" / "experiments.json").returncode == 0
    for command in (["plan", "config.yaml"], ["report", "results", "--published", "config.yaml"]):
        done = subprocess.run(
            [sys.executable, "-m", "dcl", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=limited_memory(1500),
        )
        one_line_error(done, command[0], "config.yaml", reason)


def test_a_bomb_inside_a_valid_workflow_config_is_refused(tmp_path):
    """Nine levels of 9 aliases in train_overrides made `dcl plan` and `snakemake -n` hang."""
    config = (
        (REPO / "configs" / "toy.yaml")
        .read_text()
        .replace("train_overrides: {", "train_overrides: {SOLVER.X: *b8, ", 1)
    )
    (tmp_path / "toy.yaml").write_text(
        "anchors:\n" + "".join(f"  {line}\n" for line in alias_bomb().splitlines()) + config
    )
    done = dcl("plan", "toy.yaml", "--repo-root", REPO, cwd=tmp_path, timeout=60)
    one_line_error(done, "plan", "more than 1,000,000 values")


@pytest.mark.parametrize("command", ["evaluate", "errors"])
def test_json_nested_past_any_sane_depth_is_one_line(tmp_path, command):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    done = dcl(command, "deep.json", "-a", "deep.json", cwd=tmp_path)
    one_line_error(done, command, "deep.json: nested deeper than 100 levels")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- MODEL\n- SOLVER\n", "a detectron2 config is a mapping of keys, this file holds a list"),
        ('_BASE_: "cfg.yaml"\n', "the _BASE_ chain loops: cfg.yaml -> cfg.yaml"),
    ],
)
def test_detectron2_configs_that_cannot_be_configs_are_named(tmp_path, text, message):
    (tmp_path / "cfg.yaml").write_text(text)
    done = dcl("train", "--dry-run", "--config-file", "cfg.yaml", cwd=tmp_path)
    one_line_error(done, "train", message)


@pytest.mark.parametrize(
    "args",
    [
        ["errors", "p.json", "-a", "gt.json", "-j", "-5"],
        ["evaluate", "p.json", "-a", "gt.json", "--threads", "-1"],
        ["evaluate", "p.json", "-a", "gt.json", "-j", "-1"],
        ["data", "occlusion-subset", "gt.json", "-o", "o.json", "--min-overlap", "-1"],
    ],
)
def test_usage_mistakes_exit_2(instances, args):
    done = dcl(*args, cwd=instances)
    assert done.returncode == 2 and "must be" in done.stderr, done.stderr


def test_snakemake_refuses_a_preset_that_asks_for_yte_before_loading_it(tmp_path):
    """A preset with `__use_yte__: true` would run its Python as Snakemake loads it: the
    Snakefile refuses it first (the marker file is never written)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "results", "work_dirs", "datasets"))
    marker = tmp_path / "ran"
    (checkout / "configs" / "evil.yaml").write_text(
        f"__use_yte__: true\npreset: ?__import__('pathlib').Path('{marker}').touch() or 'evil'\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--config", "preset=evil", "-s", checkout / "Snakefile"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "asks for YTE templating (__use_yte__)" in done.stdout + done.stderr
    assert not marker.exists()
