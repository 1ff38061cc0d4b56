"""dcl train: config loading, distributed layout, checkpoints, run records, the original README's
commands, and (e2e) real CPU training runs that are stopped by a signal, resumed and evaluated."""
import itertools
import json
import os
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
from detectron2.data.samplers import TrainingSampler

from dcl import train
from dcl.cli import main
from dcl.io import InputError, read_json
from dcl.runrecord import RunRecord
from dcl.slurm import DistributedLayout, expand_hostlist, resolve_distributed, slurm_job, stop_signal_option
from dcl.train import EXIT_INTERRUPTED, AtomicCheckpointer, ResumableTrainingSampler, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TOY = str(CONFIGS / "toy_coco_mask_rcnn_R18_FPN.yaml")
DCL_HEADS = ["MODEL.ROI_HEADS.NAME", "ContrastRoIHeads", "MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"]


# --------------------------------------------------------------------------- config

def test_load_config_merges_file_and_overrides_with_dcl_defaults():
    cfg = load_config(TOY, ["SOLVER.MAX_ITER", "7", "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT", "0.4"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT == 0.4
    assert cfg.MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.NUM_SAMPLES == 32
    assert cfg.is_frozen()


@pytest.mark.parametrize("body, opts, message", [
    ("MODEL:\n  ROI_MASK_HEAD:\n    CONTRAST_LOSS:\n      TEMPERATUR: 0.1\n", [],
     r"cfg\.yaml: Non-existent config key: MODEL\.ROI_MASK_HEAD\.CONTRAST_LOSS\.TEMPERATUR"),
    ("", ["SOLVER.MAX_ITERS", "3"], r"config override: Non-existent key: SOLVER\.MAX_ITERS"),
    ("", ["SOLVER.MAX_ITER"], "KEY VALUE pairs; got an odd number"),
    ("", ["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_FUNC", "infonce"], "LOSS_FUNC 'infonce' is unknown"),
    ("", ["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMPERATURE", "0.0"], "TEMPERATURE 0.0 is out of range"),
])
def test_load_config_rejects_bad_input_clearly(tmp_path, body, opts, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(f'_BASE_: "{TOY}"\n{body}')
    with pytest.raises(InputError, match=message):
        load_config(str(config), opts)


def test_load_config_missing_file():
    with pytest.raises(InputError, match="config file not found: nope.yaml"):
        load_config("nope.yaml", [])


# --------------------------------------------------------------------------- distributed layout

@pytest.mark.parametrize("hostlist, hosts", [
    ("node7", ["node7"]),
    ("gpu[01-03,07],login-1", ["gpu01", "gpu02", "gpu03", "gpu07", "login-1"]),
    ("a[098-101]", ["a098", "a099", "a100", "a101"]),
    ("rack[1-2]-n[8-9]", ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_expand_hostlist_rejects_malformed_lists():
    for bad in ("gpu[01-03", "gpu]1[", "gpu[a-b]"):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


STEP = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_PROCID": "1"}


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


def test_slurm_job_record():
    assert slurm_job({}) is None
    assert slurm_job({**STEP, "SLURM_NTASKS": "2"}) == {"job_id": "123456", "nodes": "gpu[07-08]", "ntasks": 2}


@pytest.mark.parametrize("runtime, option", [
    (1440, "--signal=TERM@300"), (10, "--signal=TERM@300"), (6, "--signal=TERM@180"),
    (3, "--signal=TERM@90"), (2, "--signal=TERM@60"), (1, "--signal=TERM@60")])
def test_stop_signal_leaves_five_minutes_or_half_a_short_limit(runtime, option):
    assert stop_signal_option(runtime) == option


def test_distributed_layout_command_line_wins():
    layout = resolve_distributed(3, 2, "tcp://h:1", STEP)
    assert (layout.num_machines, layout.machine_rank, layout.dist_url, layout.source) == (3, 2, "tcp://h:1", "command line")


def test_distributed_layout_refuses_ambiguous_slurm_launches():
    batch = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP")}
    with pytest.raises(InputError, match="not started by srun.*srun --ntasks-per-node=1"):
        resolve_distributed(None, None, None, batch)
    with pytest.raises(InputError, match="runs 8 tasks on 2 nodes"):
        resolve_distributed(None, None, None, {**STEP, "SLURM_STEP_NUM_TASKS": "8"})
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

    monkeypatch.setattr(train.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="quota"):
        checkpointer.save("model_0000019", iteration=19)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    loaded = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert loaded["iteration"] == 9 and torch.equal(loaded["model"]["weight"], model.weight)


def test_resumable_sampler_continues_detectron2s_index_stream():
    reference = list(itertools.islice(iter(TrainingSampler(10, seed=3)), 25, 55))
    sampler = ResumableTrainingSampler(10, seed=3)
    sampler.skip = 25
    assert list(itertools.islice(iter(sampler), 30)) == reference
    hook = train._DataOrderHook(ResumableTrainingSampler(10, seed=99))
    hook.load_state_dict(train._DataOrderHook(sampler).state_dict())
    assert hook.sampler.seed == 3


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
        (0, 20, "interrupted", "h1"), (20, 50, "finished", "h2")]
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
ORIGINAL_README = Path("/work/shared/reference/original-README.md")


def argv_of(command):
    """A shell command line as a list, with bash's backslash-newline continuations joined."""
    return shlex.split(command.replace("\\\n", " "))
IMAGENET_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
COCO_R50 = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"


@pytest.mark.skipif(not ORIGINAL_README.is_file(), reason="the original README is not in this checkout")
def test_readme_commands_are_the_original_ones():
    blocks = re.findall(r"```bash\n(.*?)```", ORIGINAL_README.read_text(), re.S)
    originals = [argv_of(b) for b in blocks if "train_net.py" in b]
    assert len(originals) == 4 and originals[0][:2] == ["python", "train_net.py"]
    assert [["dcl", "train"] + argv[2:] for argv in originals] == [argv_of(c) for c in README_COMMANDS]


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """A working directory with configs/ and a weights directory holding stand-in files."""
    (tmp_path / "configs").symlink_to(CONFIGS)
    weights = tmp_path / "weights"
    for spec in (IMAGENET_R50, COCO_R50):
        path = weights / "detectron2" / spec.split("://", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"stand-in")
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
            "train", "GeneralizedRCNN", "ContrastRoIHeads", "ContrastConvUpsampleHead")
        assert summary["num_gpus_per_machine"] == 4
        assert summary["weights"] == {"requested": IMAGENET_R50,
                                      "resolved": str(project_dir / "weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl")}
    assert cityscapes["num_classes"] == 8 and coco["num_classes"] == 80
    assert cityscapes["dcl"]["LOSS_WEIGHT"] == 1.2 and coco["dcl"]["LOSS_WEIGHT"] == 0.1
    assert cityscapes["solver"] == {"ims_per_batch": 8, "base_lr": 0.01, "max_iter": 24000, "steps": [18000]}
    assert coco["solver"] == {"ims_per_batch": 16, "base_lr": 0.02, "max_iter": 90000, "steps": [60000, 80000]}
    assert cityscapes["datasets"] == {"train": ["cityscapes_fine_instance_seg_train"], "test": ["cityscapes_fine_instance_seg_val"]}
    assert coco["datasets"] == {"train": ["coco_2017_train"], "test": ["coco_2017_val"]}
    assert cityscapes["output_dir"] == "work_dirs/cityscapes_mask_rcnn_dcl"


def test_readme_evaluation_commands_build_the_plain_models(project_dir, capsys):
    for command, run_dir in zip(README_COMMANDS[2:], ("cityscapes_mask_rcnn_dcl", "coco_mask_rcnn_dcl")):
        final = project_dir / "work_dirs" / run_dir / "model_final.pth"
        final.parent.mkdir(parents=True)
        final.write_bytes(b"stand-in")
        summary = dry_run(argv_of(command)[1:], capsys)
        assert (summary["mode"], summary["roi_heads"], summary["mask_head"], summary["dcl"]) == (
            "eval-only", "StandardROIHeads", "MaskRCNNConvUpsampleHead", None)
        assert summary["weights"]["resolved"] == f"work_dirs/{run_dir}/model_final.pth"


def test_cityscapes_coco_init_config(project_dir, capsys):
    summary = dry_run(["train", "--config-file", "configs/cityscapes_mask_rcnn_R_50_FPN_coco.yaml", *DCL_HEADS], capsys)
    assert summary["dcl"]["LOSS_WEIGHT"] == 1.6 and summary["num_classes"] == 8
    assert summary["weights"]["requested"] == COCO_R50
    assert summary["weights"]["resolved"].endswith("weights/detectron2/COCO-InstanceSegmentation/"
                                                   "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")


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
    summary = dry_run(["train", "--config-file", TOY, "SOLVER.MAX_ITER", "5", "--eval-only",
                       "MODEL.WEIGHTS", str(project_dir / "weights/detectron2" / COCO_R50.split("://")[1]),
                       "--num-gpus", "1"], capsys)
    assert summary["mode"] == "eval-only" and summary["solver"]["max_iter"] == 5
    if not torch.cuda.is_available():
        assert main(["train", "--num-gpus", "4", "--config-file", TOY, "MODEL.DEVICE", "cuda"]) == 1
        assert "no CUDA GPU is visible here; add `MODEL.DEVICE cpu`" in capsys.readouterr().err
    assert main(["train", "--num-gpus", "2", "--config-file", TOY, "MODEL.DEVICE", "mps"]) == 1
    assert "MODEL.DEVICE mps runs in one process" in capsys.readouterr().err
    assert main(["train", "--num-gpus", "3", "--config-file", TOY]) == 1  # CPU workers: gloo
    assert "SOLVER.IMS_PER_BATCH 4 is not divisible by the 3 worker(s)" in capsys.readouterr().err


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_a_stop_signal_during_the_set_up_ends_the_run_as_interrupted(num_gpus, project_dir, monkeypatch):
    """Slurm's pre-timeout signal may come while dcl train is still setting up (before any
    training handler exists): it is recorded, the run ends as interrupted before any iteration
    (exit 75, so the retry resumes), and the caller's signal handlers are restored. With several
    GPUs no worker is started (here: a stand-in launch, as there are no GPUs)."""
    import dcl.datasets

    if num_gpus > 1:
        monkeypatch.setattr(train, "_check_devices", lambda *args: None)
        monkeypatch.setattr(train, "launch", lambda *args, **kwargs: pytest.fail("workers were launched"))

    register = dcl.datasets.register_datasets

    def register_then_signalled():
        register()
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(dcl.datasets, "register_datasets", register_then_signalled)
    caller_received = []

    def caller_handler(signum, frame):  # reached only if dcl train does not handle the signal
        caller_received.append(signum)

    handler_before = signal.signal(signal.SIGTERM, caller_handler)
    out = project_dir / "out"
    try:
        code = main(["train", "--num-gpus", str(num_gpus), "--config-file", TOY, "SOLVER.MAX_ITER", "1",
                     "OUTPUT_DIR", str(out)])
        assert signal.getsignal(signal.SIGTERM) is caller_handler
    finally:
        signal.signal(signal.SIGTERM, handler_before)
    assert (code, caller_received) == (EXIT_INTERRUPTED, [])
    record = read_json(out / "run.json")
    assert (record["status"], record["exit_code"], record["signal"], record["iteration"]) == (
        "interrupted", EXIT_INTERRUPTED, "SIGTERM", 0)
    assert [a["status"] for a in record["attempts"]] == ["interrupted"]
    assert not (out / "last_checkpoint").exists()  # nothing trained, nothing to resume from
    assert not train.STOP.requested


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
import dcl.train  # first: applies dcl.compat before detectron2 loads
from detectron2.engine import HookBase

class SignalSelf(HookBase):
    def after_step(self):
        if self.trainer.iter == {STOP_AT}:
            os.kill(os.getpid(), signal.SIGUSR1)

build_hooks = dcl.train.Trainer.build_hooks
dcl.train.Trainer.build_hooks = lambda self: [SignalSelf()] + build_hooks(self)
from dcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def toy_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "dcl", "data", "toy", "--out", str(root), "--num-train", "8",
                    "--num-val", "4"], check=True, capture_output=True)
    return root


def run_dcl(args, env, cwd, *, launcher=None, stop_when=None, timeout=600):
    """Run `dcl <args>` (or `python launcher <args>`); optionally SIGTERM its process group as
    soon as the file ``stop_when`` exists. Returns (exit code, output)."""
    command = [sys.executable, str(launcher)] if launcher else [sys.executable, "-m", "dcl"]
    proc = subprocess.Popen(command + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
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
    command = ["train", "--config-file", TOY, *heads, "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.IMS_PER_BATCH", "2",
               "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.WARMUP_ITERS", str(WARMUP), "SOLVER.STEPS", f"({STEP_AT},)",
               "SOLVER.CHECKPOINT_PERIOD", str(period), "DATALOADER.NUM_WORKERS", "1", "SEED", "3",
               "OUTPUT_DIR", str(out)]

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
    assert (record["status"], record["exit_code"], record["signal"]) == ("interrupted", EXIT_INTERRUPTED, expected_signal)
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
        (0, done, "interrupted"), (done, MAX_ITER, "finished")]
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
    assert sorted(p.name for p in results.iterdir()) == ["config.yaml", "detectron2_eval.json", "metrics.json", "run.json"]
    assert read_json(results / "run.json") == record

    assert record["seed"] == 3

    # 3. Evaluation only, from the final weights, beside the training record.
    training_config = (out / "config.yaml").read_text()
    eval_command = ["train", "--eval-only", "--config-file", TOY, *heads, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                    "OUTPUT_DIR", str(out)]
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
    code, output = run_dcl(["train", "--config-file", config, *DCL_HEADS, "SOLVER.MAX_ITER", "3",
                            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
                            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(out)], env, tmp_path)
    assert code == 0, output[-3000:]
    assert read_json(out / "run.json")["status"] == "finished"
    assert set(read_json(out / "inference" / "detectron2_eval.json")["toy_cityscapes_val"]) == {"bbox", "segm"}
    predictions = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt = read_json(toy_datasets / "cityscapes" / "annotations" / "instancesonly_filtered_gtFine_val.json")
    assert predictions and {p["image_id"] for p in predictions} <= {image["id"] for image in gt["images"]}
