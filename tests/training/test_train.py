"""dcl train: config loading, distributed layout, checkpoints, run records, the original README's
commands, and (e2e) real CPU training runs that are stopped by a signal, resumed and evaluated."""

import itertools
import json
import os
import pickle
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dcl.compat  # noqa: F401  (before detectron2)
import torch
from detectron2.data import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from dcl.training import config, engine
from dcl.cli import main
from dcl.io import InputError, OutputError, read_json
from dcl.runrecord import RunRecord
from dcl.slurm import (
    DistributedLayout,
    expand_hostlist,
    requeue_own_job,
    resolve_distributed,
    slurm_job,
    stop_signal_option,
)
from dcl.training.config import load_config
from dcl.training.engine import AtomicCheckpointer
from dcl.training.preemption import EXIT_INTERRUPTED
from dcl.training import sampler as sampler_module
from dcl.training.sampler import ResumableTrainingSampler

from toy_training import CONFIGS, DCL_HEADS, REPO
from toy_training import TOY_COCO as TOY


# --------------------------------------------------------------------------- config


def test_load_config_merges_file_and_overrides_with_dcl_defaults():
    cfg = load_config(TOY, ["SOLVER.MAX_ITER", "7", "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT", "0.4"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT == 0.4
    assert cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.NUM_SAMPLES == 32
    assert cfg.is_frozen()


@pytest.mark.parametrize(
    "body, opts, message",
    [
        (
            "MODEL:\n  ROI_MASK_HEAD:\n    CONTRAST_LOSS:\n      TEMPERATUR: 0.1\n",
            [],
            r"cfg\.yaml: Non-existent config key: MODEL\.ROI_MASK_HEAD\.CONTRAST_LOSS\.TEMPERATUR",
        ),
        ("", ["SOLVER.MAX_ITERS", "3"], r"config override: Non-existent key: SOLVER\.MAX_ITERS"),
        ("", ["SOLVER.MAX_ITER"], "KEY VALUE pairs; got an odd number"),
        ("", ["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_FUNC", "infonce"], "LOSS_FUNC 'infonce' is unknown"),
        ("", ["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMPERATURE", "0.0"], "TEMPERATURE 0.0 is out of range"),
    ],
)
def test_load_config_rejects_bad_input_clearly(tmp_path, body, opts, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(f'_BASE_: "{TOY}"\n{body}')
    with pytest.raises(InputError, match=message):
        load_config(str(config), opts)


def test_load_config_missing_file():
    with pytest.raises(InputError, match="config file not found: nope.yaml"):
        load_config("nope.yaml", [])


RUNS_CODE = '!!python/object/apply:os.system ["touch pwned"]'


@pytest.mark.parametrize("where", ["file", "base"])
def test_python_tags_in_config_files_are_refused_before_detectron2_reads_them(tmp_path, monkeypatch, where):
    """detectron2's merge_from_file falls back to yaml.unsafe_load, which would run the tag."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub" / "base.yaml"
    base.write_text(f'_BASE_: "{TOY}"\n' + (f"SEED: {RUNS_CODE}\n" if where == "base" else ""))
    config = tmp_path / "sub" / "cfg.yaml"
    config.write_text('_BASE_: "base.yaml"\n' + (f"SEED: {RUNS_CODE}\n" if where == "file" else ""))
    faulty = base if where == "base" else config
    message = (
        rf"{faulty} \(line 2\): could not determine a constructor for the tag "
        r"'tag:yaml.org,2002:python/object/apply:os.system'; config files must be plain YAML"
    )
    with pytest.raises(InputError, match=message):
        load_config(str(config), [])
    result = subprocess.run(
        [sys.executable, "-m", "dcl", "train", "--dry-run", "--config-file", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, result.stderr.strip().splitlines()[-1])  # (after torch's import warnings)
    assert not (tmp_path / "pwned").exists()


def test_seeds_numpy_cannot_take_are_refused():
    with pytest.raises(InputError, match=r"SEED 4294967296 is out of range: numpy takes seeds below 2\^32"):
        load_config(TOY, ["SEED", str(2**32)])
    assert load_config(TOY, ["SEED", str(2**32 - 1)]).SEED == 2**32 - 1
    with pytest.raises(InputError, match=r"SEED 4294967295 \+ one per worker \(2\)"):
        config.check_devices(load_config(TOY, ["SEED", str(2**32 - 1)]), 1, 2)


def test_several_tasks_on_a_node_need_gpus_of_their_own(monkeypatch):
    cfg = load_config(TOY, ["MODEL.DEVICE", "cuda", "SOLVER.IMS_PER_BATCH", "8"])
    monkeypatch.setattr(config.torch.cuda, "device_count", lambda: 4)
    with pytest.raises(
        InputError,
        match=r"2 dcl train tasks on this node, each seeing 4 GPU\(s\) for --num-gpus 2: "
        r"give each task its own \(srun --gpus-per-task=2\)",
    ):
        config.check_devices(cfg, 2, 4, machines_per_node=2)
    config.check_devices(cfg, 4, 2, machines_per_node=1)  # one task per node: all of its GPUs
    monkeypatch.setattr(config.torch.cuda, "device_count", lambda: 2)  # bound by --gpus-per-task
    config.check_devices(cfg, 2, 4, machines_per_node=2)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_weights_that_could_run_code_are_refused_in_one_line(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 3)
    checkpointer = AtomicCheckpointer(model)
    evil_pth = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "x": RunsCode()}, evil_pth)
    with pytest.raises(
        InputError,
        match=r"evil.pth is refused by torch.load\(weights_only=True\): [^\n;]*"
        r"GLOBAL posix.system[^\n]*; only checkpoints of tensors",
    ):
        checkpointer.load(str(evil_pth))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(evil_pth.read_bytes()[:100])
    with pytest.raises(
        InputError,
        match=r"truncated.pth cannot be loaded \(corrupted, or not a checkpoint\?\): "
        r"PytorchStreamReader failed reading zip archive",
    ):
        checkpointer.load(str(truncated))
    evil_pkl = tmp_path / "evil.pkl"
    evil_pkl.write_bytes(pickle.dumps({"model": {"weight": np.zeros((3, 2), np.float32)}, "x": RunsCode()}))
    with pytest.raises(InputError, match=r"evil.pkl is refused: it refers to posix.system"):
        checkpointer.load(str(evil_pkl))
    assert not (tmp_path / "pwned").exists()
    # detectron2's model-zoo format of plain data loads.
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(
        pickle.dumps(
            {
                "model": {"weight": np.full((3, 2), 2.0, np.float32), "bias": np.ones(3, np.float32)},
                "__author__": "test",
            },
            protocol=2,
        )
    )
    checkpointer.load(str(plain))
    assert torch.equal(model.weight, torch.full((3, 2), 2.0))


@pytest.mark.e2e
def test_train_refuses_unsafe_weights_as_a_subprocess(tmp_path):
    torch.save({"model": {}, "x": RunsCode()}, tmp_path / "evil.pth")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcl",
            "train",
            "--eval-only",
            "--config-file",
            TOY,
            "MODEL.WEIGHTS",
            "evil.pth",
            "OUTPUT_DIR",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "dcl train: error: weights file evil.pth is refused by torch.load(weights_only=True)" in result.stderr
    assert read_json(tmp_path / "out" / "run.json")["status"] == "failed"
    assert not (tmp_path / "pwned").exists()


def test_a_downloaded_weights_file_is_checked_against_its_recorded_digest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "weights" / "detectron2" / "model.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02swapped")
    path.with_name("model.pkl.sha256").write_text(f"{'0' * 64}  model.pkl\n")
    for spec in ("detectron2://model.pkl", str(path)):
        assert (
            main(["train", "--dry-run", "--config-file", TOY, "--weights-dir", "weights", "MODEL.WEIGHTS", spec]) == 1
        )
        assert f"{path.relative_to(tmp_path) if '://' in spec else path}: SHA-256" in capsys.readouterr().err


# --------------------------------------------------------------------------- distributed layout


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node7", ["node7"]),
        ("gpu[01-03,07],login-1", ["gpu01", "gpu02", "gpu03", "gpu07", "login-1"]),
        ("a[098-101]", ["a098", "a099", "a100", "a101"]),
        ("rack[1-2]-n[8-9]", ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_expand_hostlist_rejects_malformed_lists():
    for bad in ("gpu[01-03", "gpu]1[", "gpu[a-b]"):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


STEP = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "1",
}


def test_distributed_layout_outside_slurm_and_in_single_node_jobs():
    for env in ({}, {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0"}):
        layout = resolve_distributed(None, None, None, env)
        assert (layout.num_machines, layout.machine_rank, layout.dist_url) == (1, 0, "auto")


def test_distributed_layout_from_a_multi_node_srun_step():
    layout = resolve_distributed(None, None, None, STEP)
    # port: 20000 + job id mod 20000, the same on every node
    assert layout == DistributedLayout(2, 1, "tcp://gpu07:23456", "slurm")
    assert resolve_distributed(None, None, None, {**STEP, "MASTER_PORT": "29500"}).dist_url == "tcp://gpu07:29500"
    assert resolve_distributed(None, None, "tcp://10.0.0.1:1234", STEP).dist_url == "tcp://10.0.0.1:1234"


def test_distributed_layout_with_several_tasks_per_node():
    # Each task is one machine, ranked by its task id: 2 tasks on one node, 8 on two.
    one_node = {
        **STEP,
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "gpu07",
        "SLURM_STEP_NODELIST": "gpu07",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "1",
    }
    assert resolve_distributed(None, None, None, one_node) == DistributedLayout(2, 1, "tcp://gpu07:23456", "slurm", 2)
    eight = {**STEP, "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "6"}
    assert resolve_distributed(None, None, None, eight) == DistributedLayout(8, 6, "tcp://gpu07:23456", "slurm", 4)
    # One task in a step is a single machine, as outside Slurm.
    single = {**one_node, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert resolve_distributed(None, None, None, single) == DistributedLayout(1, 0, "auto", "single machine")


def test_slurm_job_record():
    assert slurm_job({}) is None
    assert slurm_job({**STEP, "SLURM_NTASKS": "2"}) == {"job_id": "123456", "nodes": "gpu[07-08]", "ntasks": 2}


@pytest.mark.parametrize(
    "runtime, option",
    [
        (1440, "--signal=TERM@300"),
        (10, "--signal=TERM@300"),
        (6, "--signal=TERM@180"),
        (3, "--signal=TERM@90"),
        (2, "--signal=TERM@60"),
        (1, "--signal=TERM@60"),
    ],
)
def test_stop_signal_leaves_five_minutes_or_half_a_short_limit(runtime, option):
    assert stop_signal_option(runtime) == option


def test_an_interrupted_slurm_job_requeues_itself_until_max_chunks(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho RUNNING\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_own_job(50, 3) == "not in a Slurm job: nothing requeued"
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    assert requeue_own_job(50, 3) == "Slurm job 4711 requeued for chunk 4 of at most 50"
    assert calls.read_text() == "requeue 4711\n"
    assert requeue_own_job(3, 3) == "3 of at most 3 chunks used: not requeued (raise max_chunks to go on)"
    assert calls.read_text() == "requeue 4711\n"  # not called again
    scontrol.write_text("#!/bin/sh\necho 'Invalid job id specified' >&2\nexit 1\n")
    assert requeue_own_job(50, 1) == "scontrol requeue 4711 failed: Invalid job id specified"
    squeue.write_text("#!/bin/sh\necho CANCELLED\n")  # scancel: the same SIGTERM, but cancelled
    assert requeue_own_job(50, 1) == "Slurm job 4711 is CANCELLED (cancelled?): not requeued"


def test_max_chunks_must_be_positive(capsys):
    assert main(["train", "--config-file", TOY, "--max-chunks", "0"]) == 1
    assert "--max-chunks must be at least 1, got 0" in capsys.readouterr().err


def test_distributed_layout_command_line_wins():
    layout = resolve_distributed(3, 2, "tcp://h:1", STEP)
    assert (layout.num_machines, layout.machine_rank, layout.dist_url, layout.source) == (
        3,
        2,
        "tcp://h:1",
        "command line",
    )


def test_distributed_layout_refuses_ambiguous_slurm_launches():
    batch = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP")}
    with pytest.raises(InputError, match="not started by srun.*srun --ntasks-per-node=1"):
        resolve_distributed(None, None, None, batch)
    with pytest.raises(InputError, match="runs 3 tasks on 2 nodes.*same number of tasks on every node"):
        resolve_distributed(None, None, None, {**STEP, "SLURM_STEP_NUM_TASKS": "3"})
    with pytest.raises(InputError, match="needs --machine-rank and --dist-url"):
        resolve_distributed(2, None, None, {})


# --------------------------------------------------------------------------- checkpoints, sampler, record


def test_checkpoints_are_atomic_and_last_checkpoint_never_points_to_a_broken_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    def dies_half_way(data, f, *args, **kwargs):
        f.write(b"\x80\x02partial")
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(engine.torch, "save", dies_half_way)
    with pytest.raises(OutputError, match=r"cannot write .*model_0000019.pth: disk quota exceeded"):
        checkpointer.save("model_0000019", iteration=19)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    loaded = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert loaded["iteration"] == 9 and torch.equal(loaded["model"]["weight"], model.weight)


class TrainerState:
    """A checkpointable like the trainer: its state holds the optimizer's (``_trainer``)."""

    def __init__(self):
        self.iteration = 0

    def state_dict(self):
        return {"iteration": self.iteration, "hooks": {"x": 1}, "_trainer": {"optimizer": {"momentum": [1.0] * 9}}}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def test_only_the_newest_periodic_checkpoints_are_kept_and_the_final_one_has_no_optimizer(tmp_path):
    (tmp_path / "model_0000001.pth").write_bytes(b"from an earlier attempt")
    (tmp_path / "model_99.pth").write_bytes(b"not a periodic checkpoint")
    trainer = TrainerState()
    checkpointer = AtomicCheckpointer(torch.nn.Linear(3, 2), str(tmp_path), trainer=trainer)
    checkpointer.keep_periodic = 2
    for iteration in (4, 9, 14):
        trainer.iteration = iteration
        checkpointer.save(f"model_{iteration:07d}")
    periodic = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert periodic == ["model_0000009.pth", "model_0000014.pth", "model_99.pth"]
    assert "_trainer" in torch.load(tmp_path / "model_0000014.pth", weights_only=True)["trainer"]
    trainer.iteration = 19
    checkpointer.save("model_final", iteration=19)
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final.keys() == {"model", "trainer", "iteration"} and final["trainer"] == {"iteration": 19}
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.glob("model_0*.pth")) == ["model_0000009.pth", "model_0000014.pth"]
    # Resuming a finished run from it: past the last iteration, weights restored.
    restored = TrainerState()
    AtomicCheckpointer(torch.nn.Linear(3, 2), str(tmp_path), trainer=restored).resume_or_load("", resume=True)
    assert restored.iteration == 19


@pytest.mark.parametrize(
    "last_checkpoint",
    [
        None,
        "",
        "model_0000007",
        "model_0000011.pth",
        "model_0000009.pth",
        "../../../../etc/passwd",
        "../other/model_0000099.pth",
    ],
)
def test_resume_takes_the_newest_valid_checkpoint_when_last_checkpoint_is_broken(tmp_path, last_checkpoint):
    """last_checkpoint missing, empty, torn, naming a missing file, a truncated checkpoint or a
    file outside the folder: the newest whole checkpoint in the folder is resumed from."""
    out = tmp_path / "out"
    trainer = TrainerState()
    checkpointer = AtomicCheckpointer(torch.nn.Linear(3, 2), str(out), trainer=trainer)
    for iteration in (3, 7):
        trainer.iteration = iteration
        checkpointer.save(f"model_{iteration:07d}")
    (out / "model_0000009.pth").write_bytes((out / "model_0000007.pth").read_bytes()[:200])  # torn
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_0000099.pth").write_bytes((out / "model_0000007.pth").read_bytes())
    if last_checkpoint is None:
        (out / "last_checkpoint").unlink()
    else:
        (out / "last_checkpoint").write_text(last_checkpoint)
    restored = TrainerState()
    AtomicCheckpointer(torch.nn.Linear(3, 2), str(out), trainer=restored).resume_or_load("", resume=True)
    assert restored.iteration == 7


def test_keep_checkpoints_must_be_positive(capsys):
    assert main(["train", "--config-file", TOY, "--keep-checkpoints", "0"]) == 1
    assert "--keep-checkpoints must be at least 1, got 0" in capsys.readouterr().err


def aspect_grouped_batches(indices, landscape, batch_size):
    """detectron2's AspectRatioGroupedDataset, written out on (position, index) pairs."""
    buckets = {True: [], False: []}
    for position, index in enumerate(indices):
        bucket = buckets[landscape[index]]
        bucket.append((position, index))
        if len(bucket) == batch_size:
            yield bucket[:]
            bucket.clear()


@pytest.mark.parametrize("grouped", [False, True])
def test_resumable_sampler_continues_detectron2s_batches(grouped):
    landscape = [i % 3 != 0 for i in range(10)]
    stream = list(itertools.islice(iter(TrainingSampler(10, seed=3)), 400))
    if grouped:
        reference = list(itertools.islice(aspect_grouped_batches(stream, landscape, 4), 25, 55))
    else:
        reference = [list(enumerate(stream))[i : i + 4] for i in range(100, 220, 4)]
    sampler = ResumableTrainingSampler(10, 4, [0 if flat else 1 for flat in landscape] if grouped else None, seed=3)
    sampler.skip = 25
    assert list(itertools.islice(iter(sampler), 30)) == reference
    hook = engine._DataOrderHook(ResumableTrainingSampler(10, 4, seed=99))
    hook.load_state_dict(engine._DataOrderHook(sampler).state_dict())
    assert hook.sampler.seed == 3


def test_resumable_sampler_shards_the_stream_over_ranks(monkeypatch):
    """Rank r of W takes stream positions r, r + W, ...: together the ranks see one stream."""
    stream = list(itertools.islice(iter(TrainingSampler(10, seed=5)), 24))
    seen = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        batches = itertools.islice(iter(ResumableTrainingSampler(10, 3, seed=5)), 4)
        seen += [pair for batch in batches for pair in batch]
    assert sorted(seen) == list(enumerate(stream))


def test_training_dicts_are_stored_serialized_and_loaded_unchanged(monkeypatch):
    """One pickled buffer, not a list of dicts: forked loader workers must not copy the dataset
    (benchmarks/bench_scale.py measures the memory at COCO size)."""
    dicts = [
        {"file_name": f"{i}.jpg", "image_id": i, "width": 40 + i % 3, "height": 41, "annotations": [{"id": i}]}
        for i in range(12)
    ]
    monkeypatch.setattr(sampler_module, "get_detection_dataset_dicts", lambda *args, **kwargs: list(dicts))
    loader, sampler = sampler_module.build_train_loader(load_config(TOY, ["DATALOADER.NUM_WORKERS", "0"]))
    storage = loader.loader.dataset.dicts
    assert isinstance(storage, DatasetFromList) and storage._serialize
    assert sampler.aspect_ratios == [0 if d["width"] > d["height"] else 1 for d in dicts]

    def mapper(d):
        return {**d, "draw": random.random()}

    def batches(storage, workers):
        seeded = ResumableTrainingSampler(len(dicts), 3, seed=7)
        return list(itertools.islice(sampler_module.seeded_loader(storage, mapper, seeded, workers), 5))

    served = batches(sampler_module.serialized_dicts(dicts), 2)
    assert served == batches(dicts, 0)  # same images, same seeded draws, in worker processes too
    assert {d["file_name"] for batch in served for d in batch} <= {d["file_name"] for d in dicts}


def test_augmentation_depends_on_the_stream_position_not_only_on_the_image():
    """One image drawn at two positions of the stream gets two different random draws (numpy,
    torch and random alike); the same position, whichever worker maps it and whenever, the same."""
    import numpy as np

    def mapper(d):
        return {"image": d["image_id"], "draws": (random.random(), float(np.random.rand()), float(torch.rand(1)))}

    sampler = ResumableTrainingSampler(5, 2, seed=11)
    mapped = sampler_module.SeededBatchMapper([{"image_id": i} for i in range(5)], mapper, sampler)
    first, second, again = mapped[[(3, 4), (17, 4), (3, 4)]]
    assert first["image"] == second["image"] == 4
    assert all(a != b for a, b in zip(first["draws"], second["draws"]))
    assert again == first
    # Another sampler seed (another run or SEED): other draws at the same position.
    sampler.seed = 12
    assert mapped[[(3, 4)]][0]["draws"] != first["draws"]


def test_run_record_keeps_attempts_across_resumes(tmp_path):
    path = tmp_path / "run.json"
    fields = {"mode": "train", "host": "h1", "iteration": 0, "max_iter": 50, "command": ["dcl", "train"]}
    first = RunRecord.begin(path, resume=False, fields=fields)
    assert read_json(path)["status"] == "running"
    first.start_iteration(0)
    first.close("interrupted", EXIT_INTERRUPTED, iteration=20, signal_name="SIGTERM")
    second = RunRecord.begin(path, resume=True, fields={**fields, "host": "h2"})
    second.start_iteration(20)
    second.close("finished", 0, iteration=50)
    data = read_json(path)
    assert (data["status"], data["exit_code"], data["signal"], data["iteration"]) == ("finished", 0, None, 50)
    assert [(a["start_iter"], a["end_iter"], a["status"], a["host"]) for a in data["attempts"]] == [
        (0, 20, "interrupted", "h1"),
        (20, 50, "finished", "h2"),
    ]
    assert data["start_time"] == data["attempts"][0]["start_time"]
    assert data["wall_time_s"] >= 0
    # A resumed attempt stopped before it loads its checkpoint keeps the recorded progress.
    third = RunRecord.begin(path, resume=True, fields=fields)
    assert read_json(path)["iteration"] == 50
    third.close("interrupted", EXIT_INTERRUPTED, iteration=0, signal_name="SIGTERM")
    assert read_json(path)["iteration"] == 50
    assert read_json(path)["attempts"][-1]["start_iter"] == 50
    # A fresh (non-resumed) run starts a new record.
    RunRecord.begin(path, resume=False, fields=fields)
    assert len(read_json(path)["attempts"]) == 1


def test_an_attempt_killed_without_closing_its_record_is_marked_lost(tmp_path):
    path = tmp_path / "run.json"
    fields = {"mode": "train", "host": "h1", "iteration": 0, "max_iter": 50, "command": ["dcl", "train"]}
    killed = RunRecord.begin(path, resume=False, fields=fields)
    killed.start_iteration(0)
    killed.update(iteration=20)  # then SIGKILL: no close()
    RunRecord.begin(path, resume=True, fields=fields).close("finished", 0, iteration=50)
    assert [(a["status"], a["end_iter"]) for a in read_json(path)["attempts"]] == [("lost", 20), ("finished", 50)]


# --------------------------------------------------------------------------- the original README's commands

# The training and evaluation commands of the original README, verbatim but for
# `python train_net.py` -> `dcl train`.
README_COMMANDS = [
    """dcl train \\
        --num-gpus 4 \\
        --config-file configs/cityscapes_mask_rcnn_R_50_FPN.yaml \\
        SOLVER.IMS_PER_BATCH 8 \\
        MODEL.ROI_HEADS.NAME ContrastRoIHeads \\
        MODEL.ROI_MASK_HEAD.NAME ContrastConvUpsampleHead \\
        OUTPUT_DIR work_dirs/cityscapes_mask_rcnn_dcl""",
    """dcl train \\
        --num-gpus 4 \\
        --config-file configs/coco_mask_rcnn_R_50_FPN_1x.yaml \\
        SOLVER.IMS_PER_BATCH 16 \\
        MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT 0.1 \\
        MODEL.ROI_HEADS.NAME ContrastRoIHeads \\
        MODEL.ROI_MASK_HEAD.NAME ContrastConvUpsampleHead \\
        OUTPUT_DIR work_dirs/coco_mask_rcnn_dcl""",
    """dcl train \\
        --eval-only \\
        --num-gpus 2 \\
        --config-file configs/cityscapes_mask_rcnn_R_50_FPN.yaml \\
        MODEL.WEIGHTS work_dirs/cityscapes_mask_rcnn_dcl/model_final.pth \\
        OUTPUT_DIR work_dirs/cityscapes_mask_rcnn_dcl""",
    """dcl train \\
        --eval-only \\
        --num-gpus 2 \\
        --config-file configs/coco_mask_rcnn_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS work_dirs/coco_mask_rcnn_dcl/model_final.pth \\
        OUTPUT_DIR work_dirs/coco_mask_rcnn_dcl""",
]
# The original project's README, from the project's shared reference material: beside the clone
# in CI (../shared), at /work/shared on the development machine.
ORIGINAL_README = next(
    (
        p
        for p in (
            REPO.parent / "shared" / "reference" / "original-README.md",
            Path("/work/shared/reference/original-README.md"),
        )
        if p.is_file()
    ),
    REPO.parent / "shared" / "reference" / "original-README.md",
)


def argv_of(command):
    """A shell command line as a list, with bash's backslash-newline continuations joined."""
    return shlex.split(command.replace("\\\n", " "))


IMAGENET_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
COCO_R50 = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"


def test_readme_commands_are_the_original_ones():
    if not ORIGINAL_README.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{ORIGINAL_README} is missing: CI must provide shared/ beside the clone")
        pytest.skip(f"{ORIGINAL_README} is not present (shared/ reference material)")
    blocks = re.findall(r"```bash\n(.*?)```", ORIGINAL_README.read_text(), re.S)
    originals = [argv_of(b) for b in blocks if "train_net.py" in b]
    assert len(originals) == 4 and originals[0][:2] == ["python", "train_net.py"]
    assert [["dcl", "train"] + argv[2:] for argv in originals] == [argv_of(c) for c in README_COMMANDS]


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """A working directory with configs/ and a weights directory holding stand-in files: plain
    detectron2 weight pickles without weights (a dry run loads them, as a start would)."""
    (tmp_path / "configs").symlink_to(CONFIGS)
    weights = tmp_path / "weights"
    for spec in (IMAGENET_R50, COCO_R50):
        path = weights / "detectron2" / spec.split("://", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"model": {}, "__author__": "stand-in"}))
    monkeypatch.setenv("DCL_WEIGHTS_DIR", str(weights))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dry_run(argv, capsys):
    assert main(argv[:1] + ["--dry-run"] + argv[1:]) == 0
    return json.loads(capsys.readouterr().out)


def test_readme_training_commands_build_the_dcl_models(project_dir, capsys):
    cityscapes = dry_run(argv_of(README_COMMANDS[0])[1:], capsys)
    coco = dry_run(argv_of(README_COMMANDS[1])[1:], capsys)
    for summary in (cityscapes, coco):
        assert (summary["mode"], summary["meta_architecture"], summary["roi_heads"], summary["mask_head"]) == (
            "train",
            "GeneralizedRCNN",
            "ContrastRoIHeads",
            "ContrastConvUpsampleHead",
        )
        assert summary["num_gpus_per_machine"] == 4
        assert summary["weights"] == {
            "requested": IMAGENET_R50,
            "resolved": str(project_dir / "weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl"),
        }
    assert cityscapes["num_classes"] == 8 and coco["num_classes"] == 80
    assert cityscapes["dcl"]["LOSS_WEIGHT"] == 1.2 and coco["dcl"]["LOSS_WEIGHT"] == 0.1
    assert cityscapes["solver"] == {"ims_per_batch": 8, "base_lr": 0.01, "max_iter": 24000, "steps": [18000]}
    assert coco["solver"] == {"ims_per_batch": 16, "base_lr": 0.02, "max_iter": 90000, "steps": [60000, 80000]}
    assert cityscapes["datasets"] == {
        "train": ["cityscapes_fine_instance_seg_train"],
        "test": ["cityscapes_fine_instance_seg_val"],
    }
    assert coco["datasets"] == {"train": ["coco_2017_train"], "test": ["coco_2017_val"]}
    assert cityscapes["output_dir"] == "work_dirs/cityscapes_mask_rcnn_dcl"


def test_readme_evaluation_commands_build_the_plain_models(project_dir, capsys):
    for command, run_dir in zip(README_COMMANDS[2:], ("cityscapes_mask_rcnn_dcl", "coco_mask_rcnn_dcl")):
        final = project_dir / "work_dirs" / run_dir / "model_final.pth"
        final.parent.mkdir(parents=True)
        torch.save({"model": {}}, final)  # a checkpoint without weights: the dry run loads it
        summary = dry_run(argv_of(command)[1:], capsys)
        assert (summary["mode"], summary["roi_heads"], summary["mask_head"], summary["dcl"]) == (
            "eval-only",
            "StandardROIHeads",
            "MaskRCNNConvUpsampleHead",
            None,
        )
        assert summary["weights"]["resolved"] == f"work_dirs/{run_dir}/model_final.pth"


def test_cityscapes_coco_init_config(project_dir, capsys):
    summary = dry_run(["train", "--config-file", "configs/cityscapes_mask_rcnn_R_50_FPN_coco.yaml", *DCL_HEADS], capsys)
    assert summary["dcl"]["LOSS_WEIGHT"] == 1.6 and summary["num_classes"] == 8
    assert summary["weights"]["requested"] == COCO_R50
    assert summary["weights"]["resolved"].endswith(
        "weights/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    )


def test_missing_inputs_are_clear_errors(project_dir, capsys):
    (project_dir / "weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl").unlink()
    cityscapes = ["train", "--config-file", "configs/cityscapes_mask_rcnn_R_50_FPN.yaml"]
    assert main(cityscapes[:1] + ["--dry-run"] + cityscapes[1:]) == 1
    err = capsys.readouterr().err
    assert f"run: dcl weights download {IMAGENET_R50} --weights-dir {project_dir / 'weights'}" in err
    assert main(["train", "--dry-run", "--eval-only", "--config-file", TOY, "MODEL.WEIGHTS", "nowhere.pth"]) == 1
    assert "MODEL.WEIGHTS file not found: nowhere.pth" in capsys.readouterr().err
    assert main(["train", "--dry-run", "--config-file", TOY, "DATASETS.TRAIN", "('toy_cocoo_train',)"]) == 1
    assert "unknown dataset(s) toy_cocoo_train" in capsys.readouterr().err
    # Options after the overrides are options (as users type them), not config keys.
    summary = dry_run(
        [
            "train",
            "--config-file",
            TOY,
            "SOLVER.MAX_ITER",
            "5",
            "--eval-only",
            "MODEL.WEIGHTS",
            str(project_dir / "weights/detectron2" / COCO_R50.split("://")[1]),
            "--num-gpus",
            "1",
        ],
        capsys,
    )
    assert summary["mode"] == "eval-only" and summary["solver"]["max_iter"] == 5
    if not torch.cuda.is_available():
        assert main(["train", "--num-gpus", "4", "--config-file", TOY, "MODEL.DEVICE", "cuda"]) == 1
        assert "no CUDA GPU is visible here; add `MODEL.DEVICE cpu`" in capsys.readouterr().err
    assert main(["train", "--num-gpus", "2", "--config-file", TOY, "MODEL.DEVICE", "mps"]) == 1
    assert "MODEL.DEVICE mps runs in one process" in capsys.readouterr().err
    assert main(["train", "--num-gpus", "3", "--config-file", TOY]) == 1  # CPU workers: gloo
    assert "SOLVER.IMS_PER_BATCH 4 must be a positive multiple of the 3 worker(s)" in capsys.readouterr().err


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_a_stop_signal_during_the_set_up_ends_the_run_as_interrupted(num_gpus, project_dir, monkeypatch):
    """Slurm's pre-timeout signal may come while dcl train is still setting up (before any
    training handler exists): it is recorded, the run ends as interrupted before any iteration
    (exit 75, so the retry resumes), and the caller's signal handlers are restored. With several
    GPUs no worker is started (here: a stand-in launch, as there are no GPUs)."""
    import dcl.data.datasets
    import dcl.training.train

    if num_gpus > 1:
        monkeypatch.setattr(dcl.training.train, "check_devices", lambda *args: None)
        monkeypatch.setattr(dcl.training.train, "launch", lambda *args, **kwargs: pytest.fail("workers were launched"))

    register = dcl.data.datasets.register_datasets

    def register_then_signalled():
        register()
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(dcl.data.datasets, "register_datasets", register_then_signalled)
    caller_received = []

    def caller_handler(signum, frame):  # reached only if dcl train does not handle the signal
        caller_received.append(signum)

    handler_before = signal.signal(signal.SIGTERM, caller_handler)
    out = project_dir / "out"
    try:
        code = main(
            ["train", "--num-gpus", str(num_gpus), "--config-file", TOY, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)]
        )
        assert signal.getsignal(signal.SIGTERM) is caller_handler
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    assert (code, caller_received) == (EXIT_INTERRUPTED, [])
    record = read_json(out / "run.json")
    assert (record["status"], record["exit_code"], record["signal"], record["iteration"]) == (
        "interrupted",
        EXIT_INTERRUPTED,
        "SIGTERM",
        0,
    )
    assert [a["status"] for a in record["attempts"]] == ["interrupted"]
    assert not (out / "last_checkpoint").exists()  # nothing trained, nothing to resume from


# --------------------------------------------------------------------------- end to end on the CPU

MAX_ITER, BASE_LR, WARMUP, STEP_AT, GAMMA = 12, 0.005, 4, 8, 0.1
STOP_AT = 5  # the iteration after which the deterministic run signals itself


def expected_lr(iteration):
    """detectron2's WarmupMultiStepLR with linear warmup (factor 0.001), written out."""
    if iteration < WARMUP:
        alpha = iteration / WARMUP
        return BASE_LR * (0.001 * (1 - alpha) + alpha)
    return BASE_LR * (GAMMA if iteration >= STEP_AT else 1.0)


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


def run_dcl(args, env, cwd, *, launcher=None, stop_when=None, timeout=600):
    """Run `dcl <args>` (or `python launcher <args>`); optionally SIGTERM its process group as
    soon as the file ``stop_when`` exists. Returns (exit code, output)."""
    command = [sys.executable, str(launcher)] if launcher else [sys.executable, "-m", "dcl"]
    proc = subprocess.Popen(
        command + args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if stop_when is not None:
        deadline = time.monotonic() + timeout
        while not stop_when.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, f"{stop_when} did not appear"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # main process and data-loader workers, as Slurm does
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def metric_lines(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["baseline", "dcl"])
def test_train_interrupt_resume_and_evaluate_on_cpu(method, toy_datasets, tmp_path):
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out, results = tmp_path / "out", tmp_path / "results"
    heads = DCL_HEADS if method == "dcl" else []
    # The baseline checkpoints every 3 iterations (its first checkpoint is the cue to stop it);
    # DCL only when stopped.
    period = 3 if method == "baseline" else 1000
    command = [
        "train",
        "--config-file",
        TOY,
        *heads,
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        str(BASE_LR),
        "SOLVER.WARMUP_ITERS",
        str(WARMUP),
        "SOLVER.STEPS",
        f"({STEP_AT},)",
        "SOLVER.CHECKPOINT_PERIOD",
        str(period),
        "DATALOADER.NUM_WORKERS",
        "1",
        "SEED",
        "3",
        "OUTPUT_DIR",
        str(out),
    ]

    # 1. Stopped by a signal: the baseline by SIGTERM to its whole process group once its first
    #    periodic checkpoint exists (so at some iteration >= 3), DCL by a SIGUSR1 it sends itself
    #    after iteration STOP_AT.
    if method == "baseline":
        code, output = run_dcl(command, env, tmp_path, stop_when=out / "model_0000002.pth")
        expected_signal = "SIGTERM"
    else:
        launcher = tmp_path / "self_signalling.py"
        launcher.write_text(SELF_SIGNALLING)
        code, output = run_dcl(command, env, tmp_path, launcher=launcher)
        expected_signal = "SIGUSR1"
    assert code == EXIT_INTERRUPTED, output[-3000:]
    record = read_json(out / "run.json")
    done = record["iteration"]
    assert (record["status"], record["exit_code"], record["signal"]) == (
        "interrupted",
        EXIT_INTERRUPTED,
        expected_signal,
    )
    assert 3 <= done < MAX_ITER, "the run ended before the signal; the test needs a larger MAX_ITER"
    if method == "dcl":
        assert done == STOP_AT + 1
    assert not (out / "model_final.pth").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # The checkpoint at the last completed iteration (written on the signal, or periodic).
    assert (out / "last_checkpoint").read_text() == f"model_{done - 1:07d}.pth"
    checkpoint = torch.load(out / f"model_{done - 1:07d}.pth", weights_only=False)
    assert checkpoint["trainer"]["iteration"] == done - 1
    assert "_DataOrderHook" in checkpoint["trainer"]["hooks"]

    # 2. Resumed: continues at iteration `done` with the same LR schedule, then evaluates.
    code, output = run_dcl(command + ["--resume", "--results-dir", str(results)], env, tmp_path)
    assert code == 0, output[-3000:]
    assert f"Starting training from iteration {done}" in (out / "log.txt").read_text()
    record = read_json(out / "run.json")
    assert (record["status"], record["exit_code"], record["iteration"]) == ("finished", 0, MAX_ITER)
    assert [(a["start_iter"], a["end_iter"], a["status"]) for a in record["attempts"]] == [
        (0, done, "interrupted"),
        (done, MAX_ITER, "finished"),
    ]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    lr_lines = [line for line in metric_lines(out) if "lr" in line]
    assert lr_lines[-1]["iteration"] == MAX_ITER - 1
    for line in lr_lines:
        assert line["lr"] == pytest.approx(expected_lr(line["iteration"]), rel=1e-6), line
    losses = {k for line in lr_lines for k in line if k.startswith("loss_")}
    assert ("loss_contrast" in losses) == (method == "dcl")
    evaluation = read_json(out / "inference" / "detectron2_eval.json")
    assert set(evaluation["toy_coco_val"]) == {"bbox", "segm"}
    assert isinstance(json.loads((out / "inference" / "coco_instances_results.json").read_text()), list)
    assert sorted(p.name for p in results.iterdir()) == [
        "config.yaml",
        "detectron2_eval.json",
        "metrics.json",
        "run.json",
    ]
    assert read_json(results / "run.json") == record

    assert record["seed"] == 3

    # 3. Evaluation only, from the final weights, beside the training record.
    training_config = (out / "config.yaml").read_text()
    eval_command = [
        "train",
        "--eval-only",
        "--config-file",
        TOY,
        *heads,
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(out),
    ]
    code, output = run_dcl(eval_command, env, tmp_path)
    assert code == 0, output[-3000:]
    eval_record = read_json(out / "inference" / "run.json")
    assert (eval_record["mode"], eval_record["status"]) == ("eval-only", "finished")
    # The training's record and config are kept; the evaluation's sit in inference/.
    assert read_json(out / "run.json")["mode"] == "train"
    assert (out / "config.yaml").read_text() == training_config
    assert "model_final.pth" in (out / "inference" / "config.yaml").read_text()
    assert read_json(out / "inference" / "detectron2_eval.json") == evaluation  # same weights, same AP


@pytest.mark.e2e
def test_toy_cityscapes_config_trains_and_evaluates(toy_datasets, tmp_path):
    # The Cityscapes-format toy data goes through detectron2's Cityscapes loader for training and
    # is evaluated on its COCO-JSON conversion, as the real dataset is.
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    config = str(CONFIGS / "toy_cityscapes_mask_rcnn_R18_FPN.yaml")
    # Score threshold 0: after three iterations the model must still output detections.
    code, output = run_dcl(
        [
            "train",
            "--config-file",
            config,
            *DCL_HEADS,
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            "SEED",
            "1",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(out),
        ],
        env,
        tmp_path,
    )
    assert code == 0, output[-3000:]
    assert read_json(out / "run.json")["status"] == "finished"
    evaluation = read_json(out / "inference" / "detectron2_eval.json")["toy_cityscapes_val"]
    assert set(evaluation) == {"bbox", "segm", "cityscapes"}
    predictions = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt_file = toy_datasets / "cityscapes" / "annotations" / "instancesonly_filtered_gtFine_val.json"
    gt = read_json(gt_file)
    assert predictions and {p["image_id"] for p in predictions} <= {image["id"] for image in gt["images"]}
    # The official Cityscapes AP, during training: what `dcl evaluate --cityscapes-root` (tested
    # against cityscapesscripts run directly) gives on the same predictions.
    from dcl.evaluation.evaluate import evaluate

    reference = evaluate(str(gt_file), predictions, cityscapes_root=toy_datasets / "cityscapes")["cityscapes"]
    assert evaluation["cityscapes"] == {"AP": reference["AP"], "AP50": reference["AP50"]}
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any(m.get("cityscapes/AP") == reference["AP"] and "segm/AP" in m for m in metrics)
    assert "Cityscapes instance-level AP (cityscapesscripts): AP" in (out / "log.txt").read_text()
    assert "copypaste: Task: cityscapes" in (out / "log.txt").read_text()
    # --eval-only records it too.
    code, output = run_dcl(
        [
            "train",
            "--eval-only",
            "--config-file",
            config,
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(out),
        ],
        env,
        tmp_path,
    )
    assert code == 0, output[-3000:]
    assert (
        read_json(out / "inference" / "detectron2_eval.json")["toy_cityscapes_val"]["cityscapes"]
        == evaluation["cityscapes"]
    )
    assert "Cityscapes instance-level AP (cityscapesscripts)" in (out / "inference" / "log.txt").read_text()


# --------------------------------------------------------------------------- failures and resumes

LOSS_RECORDING = """
import json, os, signal, sys
import dcl.training.engine  # first: applies dcl.compat before detectron2 loads
from detectron2.engine import HookBase

STOPS = [int(i) for i in os.environ.get("STOP_AFTER", "").split(",") if i]
SIGNAL = getattr(signal, os.environ.get("STOP_SIGNAL", "SIGTERM"))

class RecordAndStop(HookBase):
    def after_step(self):
        with open(os.environ["LOSSES"], "a") as f:
            f.write(json.dumps({"iteration": self.trainer.iter,
                                "total_loss": self.trainer.storage.history("total_loss").latest()}) + "\\n")
        if self.trainer.iter in STOPS:
            os.kill(os.getpid(), SIGNAL)

build_hooks = dcl.training.engine.Trainer.build_hooks
dcl.training.engine.Trainer.build_hooks = lambda self: [RecordAndStop()] + build_hooks(self)
from dcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def toy_command(out, *extra):
    return [
        "train",
        "--config-file",
        TOY,
        *extra,
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        str(BASE_LR),
        "SOLVER.WARMUP_ITERS",
        str(WARMUP),
        "DATALOADER.NUM_WORKERS",
        "1",
        "SEED",
        "1",
        "OUTPUT_DIR",
        str(out),
    ]


def assert_no_process_left(pgid):
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.mark.e2e
def test_a_diverging_training_fails_at_once_and_leaves_no_process(toy_datasets, tmp_path):
    """NaN loss with two data-loader workers alive (they ignore SIGTERM): exit 1 within a
    minute, run.json failed with the reason, no process of the run left."""
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    command = [
        "train",
        "--config-file",
        TOY,
        "--resume",
        "SEED",
        "0",
        "SOLVER.BASE_LR",
        "100000.0",
        "SOLVER.MAX_ITER",
        "30",
        "DATALOADER.NUM_WORKERS",
        "2",
        "OUTPUT_DIR",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcl", *command],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a training whose loss became NaN did not exit within 60 s")
    assert proc.returncode == 1, output[-3000:]
    assert "FloatingPointError: Loss became infinite or NaN" in output
    assert_no_process_left(proc.pid)
    record = read_json(out / "run.json")
    assert (record["status"], record["exit_code"]) == ("failed", 1)
    assert record["error"].startswith("FloatingPointError: Loss became infinite or NaN")


@pytest.mark.e2e
def test_ctrl_c_checkpoints_like_a_preemption(toy_datasets, tmp_path):
    env = {
        **os.environ,
        "DCL_TOY_DATASETS": str(toy_datasets),
        "OMP_NUM_THREADS": "1",
        "LOSSES": str(tmp_path / "losses.jsonl"),
        "STOP_AFTER": "2",
        "STOP_SIGNAL": "SIGINT",
    }
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LOSS_RECORDING)
    out = tmp_path / "out"
    code, output = run_dcl(
        toy_command(out, "SOLVER.MAX_ITER", "20", "DATASETS.TEST", "()"), env, tmp_path, launcher=launcher, timeout=300
    )
    assert code == EXIT_INTERRUPTED, output[-3000:]
    record = read_json(out / "run.json")
    assert (record["status"], record["signal"], record["iteration"]) == ("interrupted", "SIGINT", 3)
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"


@pytest.mark.e2e
def test_a_signal_right_after_the_start_ends_the_run_as_interrupted(toy_datasets, tmp_path):
    """SIGTERM while `dcl train` is still importing torch: exit 75 with its run.json, not 143."""
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcl", *toy_command(out, "SOLVER.MAX_ITER", "5")],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.7)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output[-3000:]
    record = read_json(out / "run.json")
    assert (record["status"], record["signal"], record["iteration"]) == ("interrupted", "SIGTERM", 0)


def relative_l2(a, b):
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    den = sum(float((a[k].double() ** 2).sum()) for k in a)
    return (num / den) ** 0.5


@pytest.mark.e2e
def test_a_run_stopped_twice_and_resumed_is_the_uninterrupted_run(toy_datasets, tmp_path):
    """CPU, fixed threads: the DCL model stopped after iterations 3 and 6 and resumed twice
    (data-loader workers restarted each time) has the uninterrupted run's loss at every
    iteration and its final weights: optimizer, LR schedule, RNGs and data order restored,
    also when only the newest periodic checkpoint is kept (--keep-checkpoints 1)."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LOSS_RECORDING)
    base_env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, stops in (("straight", ""), ("resumed", "3,6")):
        out, losses = tmp_path / name, tmp_path / f"{name}.jsonl"
        env = {**base_env, "LOSSES": str(losses), "STOP_AFTER": stops}
        command = toy_command(
            out,
            *DCL_HEADS,
            *("SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(8,)", "SOLVER.CHECKPOINT_PERIOD", "4"),
            *("DATASETS.TEST", "()", "--keep-checkpoints", "1"),
        )
        codes = []
        for attempt in range(3):
            code, output = run_dcl(
                # No time limit that a loaded machine could hit (load 12 on 2 cores once took this
                # test 28 minutes and ended it here): nothing in the guarantee depends on time.
                command + (["--resume"] if attempt else []),
                env,
                tmp_path,
                launcher=launcher,
                timeout=3600,
            )
            codes.append(code)
            if code != EXIT_INTERRUPTED:
                break
        assert codes[-1] == 0, output[-3000:]
        # One periodic checkpoint kept (also across the attempts) beside the final weights.
        assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000007.pth", "model_final.pth"]
        runs[name] = (
            [json.loads(line) for line in losses.read_text().splitlines()],
            torch.load(out / "model_final.pth", weights_only=False)["model"],
        )
    assert codes == [EXIT_INTERRUPTED, EXIT_INTERRUPTED, 0]
    (straight, straight_weights), (resumed, resumed_weights) = runs["straight"], runs["resumed"]
    assert [line["iteration"] for line in resumed] == list(range(10))
    for a, b in zip(straight, resumed):
        assert b["total_loss"] == pytest.approx(a["total_loss"], rel=1e-5), (a, b)
    assert relative_l2(straight_weights, resumed_weights) < 1e-5


# --------------------------------------------------------------------------- atomic outputs


def test_evaluator_outputs_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    """detectron2 writes coco_instances_results.json in place; ours goes through a staging folder."""
    from detectron2.evaluation import COCOEvaluator

    def writes(fail):
        def evaluate(self, img_ids=None):
            with open(os.path.join(self._output_dir, "coco_instances_results.json"), "w") as f:
                f.write('[{"image_id": 1')
                if fail:
                    raise RuntimeError("killed mid-write")
                f.write("}]")
            return {"segm": {"AP": 1.0}}

        return evaluate

    evaluator = object.__new__(engine.AtomicCOCOEvaluator)
    evaluator._output_dir = str(tmp_path)
    monkeypatch.setattr(COCOEvaluator, "evaluate", writes(fail=True))
    with pytest.raises(RuntimeError):
        evaluator.evaluate()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(COCOEvaluator, "evaluate", writes(fail=False))
    assert evaluator.evaluate() == {"segm": {"AP": 1.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["coco_instances_results.json"]
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == [{"image_id": 1}]
    assert evaluator._output_dir == str(tmp_path)


@pytest.mark.e2e
def test_a_killed_run_leaves_nothing_stale_once_resumed(toy_datasets, tmp_path):
    """SIGKILL (no handler runs): run.json stays 'running', a checkpoint or evaluator temporary
    may be left half-written, metrics.json may end in a torn line. The next start cleans up."""
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    args = [
        "train",
        "--config-file",
        TOY,
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.CHECKPOINT_PERIOD",
        "3",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "1",
        "OUTPUT_DIR",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcl", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (out / "model_0000002.pth").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert read_json(out / "run.json")["status"] == "running"  # nobody closed it
    # What a kill during a checkpoint save / the evaluation / a metrics append leaves.
    (out / ".model_0000005.pth.k1ll3d_x.pth").write_bytes(b"PK\x03\x04half")
    (out / "inference" / ".staging.k1ll3d_x").mkdir(parents=True)
    (out / "inference" / ".staging.k1ll3d_x" / "coco_instances_results.json").write_text('[{"image_id"')
    with open(out / "metrics.json", "a") as f:
        f.write('{"iteration": 4, "tot')

    code, output = run_dcl(args + ["--resume"], env, tmp_path)
    assert code == 0, output[-3000:]
    assert not [p for p in out.rglob(".*")], sorted(out.rglob(".*"))
    record = read_json(out / "run.json")
    assert record["status"] == "finished"
    assert [a["status"] for a in record["attempts"]] == ["lost", "finished"]
    # The lost attempt ended where its last checkpoint (3 or, on a loaded machine, 6 iterations
    # done) lets the next one start.
    assert record["attempts"][0]["end_iter"] == record["attempts"][1]["start_iter"] in (3, 6)
    assert all(json.loads(line) for line in (out / "metrics.json").read_text().splitlines())
    assert isinstance(json.loads((out / "inference" / "coco_instances_results.json").read_text()), list)


@pytest.mark.e2e
def test_test_time_augmentation_and_expected_results_as_in_train_net(toy_datasets, tmp_path):
    """TEST.AUG.ENABLED: detectron2's GeneralizedRCNNWithTTA after training and in --eval-only,
    in OUTPUT_DIR/inference_TTA with `_TTA` result keys; TEST.EXPECTED_RESULTS: verify_results,
    a miss failing the run with what was expected."""
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    tta = [
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(112, 128)",
        "TEST.AUG.MAX_SIZE",
        "256",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    ]
    code, output = run_dcl(
        [
            "train",
            "--config-file",
            TOY,
            *DCL_HEADS,
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            *tta,
            "TEST.EXPECTED_RESULTS",
            "[['segm', 'AP', 50.0, 100.0]]",
            "OUTPUT_DIR",
            str(out),
        ],
        env,
        tmp_path,
    )
    assert code == 0, output[-3000:]
    assert "Running inference with test-time augmentation" in output and "Results verification passed" in output
    plain = read_json(out / "inference" / "detectron2_eval.json")["toy_coco_val"]
    augmented = read_json(out / "inference_TTA" / "detectron2_eval.json")["toy_coco_val"]
    assert set(plain) == set(augmented) == {"bbox", "segm"}  # the same format, in its own folder
    # After three iterations both APs may be 0: the predictions themselves tell the two apart.
    plain_predictions = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    augmented_predictions = json.loads((out / "inference_TTA" / "coco_instances_results.json").read_text())
    assert augmented_predictions and augmented_predictions != plain_predictions
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any(m.get("segm_TTA/AP") == augmented["segm"]["AP"] for m in metrics)
    # --eval-only: the plain and the TTA evaluation, then the check (here of the TTA result).
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out)]
    expected = f"[['segm_TTA', 'AP', {augmented['segm']['AP']!r}, 1e-6]]"
    code, output = run_dcl(
        ["train", "--eval-only", "--config-file", TOY, *tta, "TEST.EXPECTED_RESULTS", expected, *weights], env, tmp_path
    )
    assert code == 0, output[-3000:]
    assert read_json(out / "inference_TTA" / "detectron2_eval.json")["toy_coco_val"] == augmented
    # A result outside its tolerance fails the run, saying what was expected.
    code, output = run_dcl(
        [
            "train",
            "--eval-only",
            "--config-file",
            TOY,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "TEST.EXPECTED_RESULTS",
            "[['segm', 'AP', -1.0, 0.5]]",
            *weights,
        ],
        env,
        tmp_path,
    )
    assert code == 1
    record = read_json(out / "inference" / "run.json")
    assert (
        record["status"] == "failed"
        and "TEST.EXPECTED_RESULTS not met: expected segm AP -1.0 +- 0.5" in record["error"]
    )


def test_options_after_the_overrides_and_the_recorded_command():
    """`... SOLVER.MAX_ITER 5 --resume`: --resume is an option, 5 a value; run.json records the
    command as given (options first, then the overrides). A VALUE position is never an option."""
    import argparse

    from dcl.training.options import add_arguments, command_line, take_trailing_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5", "--resume", "--num-gpus", "2"])
    take_trailing_options(args)
    assert args.resume and args.num_gpus == 2 and args.opts == ["SOLVER.MAX_ITER", "5"]
    assert command_line(args) == [
        "dcl", "train", "--config-file", "x.yaml", "--num-gpus", "2", "--resume", "SOLVER.MAX_ITER", "5"
    ]  # fmt: skip
    args = parser.parse_args(["--config-file", "x.yaml", "OUTPUT_DIR", "--resume"])
    take_trailing_options(args)
    assert not args.resume and args.opts == ["OUTPUT_DIR", "--resume"]


# ----------------------------------------------------------------------------- issue 22: mutation survivors
def test_one_image_in_batches_of_one_is_a_valid_sampler():
    sampler = ResumableTrainingSampler(1, 1, shuffle=False, seed=0)
    assert list(itertools.islice(iter(sampler), 3)) == [[(0, 0)], [(1, 0)], [(2, 0)]]


def test_a_mapper_that_rejects_every_image_is_named_after_ten_tries():
    tried = []

    def reject(record):
        tried.append(record["file_name"])
        return None

    sampler = ResumableTrainingSampler(2, 1, shuffle=False, seed=0)
    mapper = sampler_module.SeededBatchMapper([{"file_name": "a.png"}, {"file_name": "b.png"}], reject, sampler)
    with pytest.raises(RuntimeError, match=r"^the data mapper rejected 10 images in a row \(last: [ab]\.png\)$"):
        mapper[[(0, 0)]]
    assert len(tried) == 10 and tried[0] == "a.png"


def _stop_signal_handling(record):
    """A loader worker's handling of SIGTERM (the first stop signal) and its process id."""
    return {"ignores_sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "pid": os.getpid()}


def test_loader_workers_ignore_stop_signals():
    """Slurm signals every process of the step: the main process decides when to stop."""
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # here: not inherited by the worker
    sampler = ResumableTrainingSampler(2, 1, shuffle=False, seed=0)
    loader = sampler_module.seeded_loader([{"file_name": "a.png"}] * 2, _stop_signal_handling, sampler, 1)
    try:
        (mapped,) = next(iter(loader))
        assert mapped["pid"] != os.getpid() and mapped["ignores_sigterm"]
    finally:
        loader.close()


def test_a_signal_received_during_start_up_is_taken_over_and_logged(caplog):
    from dcl.training import early_signals
    from dcl.training.preemption import StopSignal

    stop = StopSignal()
    early_signals.RECEIVED[:] = [signal.SIGUSR1]
    with caplog.at_level("WARNING", logger="dcl.training.train"), stop.handling("after the current iteration"):
        assert (stop.requested, stop.name) == (True, "SIGUSR1")
    assert "received SIGUSR1 during start-up: stopping after the current iteration" in caplog.messages


def test_a_signal_in_the_loop_is_logged_with_where_the_run_stops(caplog):
    from dcl.training.preemption import StopSignal, TrainingInterrupted

    stop = StopSignal()
    with caplog.at_level("WARNING", logger="dcl.training.train"), stop.handling("after the current iteration"):
        os.kill(os.getpid(), signal.SIGUSR1)  # deferred: recorded, the loop stops later
        assert stop.name == "SIGUSR1"
    assert caplog.messages[-1] == "received SIGUSR1: stopping after the current iteration"
    stop = StopSignal()
    with caplog.at_level("WARNING", logger="dcl.training.train"), stop.handling("x"), stop.deferred(False):
        with pytest.raises(TrainingInterrupted):
            os.kill(os.getpid(), signal.SIGUSR1)  # not deferred: at once
            time.sleep(1)
    assert caplog.messages[-1] == "received SIGUSR1: stopping now"


class _Trainer:
    completed_iterations = 7

    def __init__(self):
        self.saved = 0

    def save_progress(self):
        self.saved += 1


def test_an_interruption_checkpoints_closes_the_record_and_exits_75(tmp_path, caplog):
    from dcl.training.preemption import StopSignal, TrainingInterrupted, exit_if_interrupted

    path = tmp_path / "run.json"
    for error, signum, message in [
        (TrainingInterrupted(signal.SIGTERM), None, "stopped by SIGTERM; resume with --resume (exit code 75)"),
        (
            RuntimeError("worker died"),
            signal.SIGUSR1,
            "error after SIGUSR1 (worker died): treating the run as interrupted",
        ),
    ]:
        trainer, stop = _Trainer(), StopSignal()
        stop.signum = signum
        record = RunRecord.begin(path, resume=False, fields={"mode": "train", "iteration": 0, "max_iter": 10})
        with caplog.at_level("WARNING", logger="dcl.training.train"), pytest.raises(SystemExit) as exited:
            exit_if_interrupted(stop, trainer, record, error)
        assert exited.value.code == EXIT_INTERRUPTED == 75
        assert trainer.saved == 1
        data = read_json(path, "run record")
        assert (data["status"], data["exit_code"], data["iteration"]) == ("interrupted", 75, 7)
        assert data["signal"] == ("SIGTERM" if signum is None else "SIGUSR1")
        assert message in caplog.messages
    # Any other error, without a stop signal: not an interruption, the caller handles it.
    assert exit_if_interrupted(StopSignal(), _Trainer(), None, RuntimeError("bug")) is None
