"""The Snakemake workflow: dry-runs of the paper matrix, config errors before anything runs, profiles,
lint, the toy DAG end to end, incremental re-runs.

Expected job counts and command lines are derived here by hand from the paper's recipes; the Slurm
submission flags are produced by the executor plugin's own code from the resources the dry-run
reports, so the test checks that our resource names mean what the plugin reads.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from instance_fixtures import run_dcl
from toy_training import TOY_WORKFLOW_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# dcl must be on PATH for the jobs, as in an activated environment.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
for variable in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "DETECTRON2_DATASETS", "DCL_TOY_DATASETS", "DCL_WEIGHTS_DIR"):
    ENV.pop(variable, None)
# A stuck job must fail the test, not hang CI.
TIMEOUT_S = 900


def snakemake(*args, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *map(str, args)], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout
    )


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry-)run."""
    match = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal\s+\d+", output, re.S)
    assert match, output[-3000:]
    return {name: int(count) for name, count in (line.split() for line in match.group(1).splitlines())}


def dry_run_jobs(output: str) -> list[dict]:
    """Each job block of `snakemake -n -p`: rule, wildcards, resources, input and shell command."""
    jobs = []
    for block in re.split(r"\n\[[^\]\n]+\]\n", output)[1:]:
        match = re.match(r"(?:local)?rule (\w+):\n", block)
        if not match:
            continue
        job = {"rule": match.group(1)}
        for key in ("input", "output", "wildcards", "resources", "log"):
            found = re.search(rf"^    {key}: (.*)$", block, re.M)
            job[key] = found.group(1) if found else ""
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        job["shell"] = command.group(1) if command else ""
        job["resources"] = dict(item.split("=", 1) for item in job["resources"].split(", ") if "=" in item)
        job["wildcards"] = dict(item.split("=", 1) for item in job["wildcards"].split(", ") if "=" in item)
        jobs.append(job)
    return jobs


def slurm_dry_run(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`snakemake -n -p --profile slurm` of this checkout's workflow, run in ``cwd``."""
    return snakemake(
        "--snakefile", REPO / "Snakefile", "--profile", REPO / "slurm", "-n", "-p", *args, cwd=cwd, env=env
    )


# ----------------------------------------------------------------------------- the paper, dry
@pytest.fixture(scope="module")
def paper_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")


@pytest.fixture(scope="module")
def paper_dry_run(paper_workdir):
    """`snakemake -n -p --profile slurm` of the paper config, without any data, as on a login node.
    ``--cores 16``: a dry run shows each job's threads capped at --cores, a Slurm job gets all of
    its cpus_per_task (16)."""
    env = {**ENV, "SBATCH_PARTITION": "gpuq", "SBATCH_ACCOUNT": "dcl-project"}
    result = slurm_dry_run("--cores", "16", cwd=paper_workdir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_paper_dry_run_plans_every_job(paper_dry_run):
    # 60 trainings = (3 Mask R-CNN settings + RefineMask) x 2 methods x 3 seeds + 12 new ablation
    # points x 3 seeds; 7 released checkpoints; each of the 67 runs is evaluated once and analysed twice.
    assert job_stats(paper_dry_run) == {
        "check_dataset": 2,
        "cityscapes_to_coco": 1,
        "cityscapes_to_coco_detectron": 1,
        "download_weights": 9,
        "train": 60,
        "inference": 7,
        "evaluate": 67,
        "errors": 134,
        "plan": 1,
        "report": 1,
        "all": 1,
    }


def test_paper_training_jobs_ask_for_the_recipe_resources(paper_dry_run):
    jobs = [j for j in dry_run_jobs(paper_dry_run) if j["rule"] == "train"]
    assert len(jobs) == 60
    for job in jobs:
        resources = job["resources"]
        coco = job["wildcards"]["experiment"].startswith("coco")
        refinemask = "refinemask" in job["wildcards"]["experiment"]
        assert resources["gpu"] == "4"
        assert resources["cpus_per_task"] == "16"
        assert resources["runtime"] == ("1440" if coco else "1080" if refinemask else "720")
        assert resources["mem_mb"] == "64000"
        assert resources["slurm_extra"] == "--signal=TERM@300"
        assert resources["slurm_partition"] == "gpuq" and resources["slurm_account"] == "dcl-project"
        # The data check (a local rule) comes before any training job.
        dataset = "coco" if coco else "cityscapes"
        assert f"work_dirs/paper/data/{dataset}.check.json" in job["input"]
    inference = [j for j in dry_run_jobs(paper_dry_run) if j["rule"] == "inference"]
    assert {j["resources"]["gpu"] for j in inference} == {"1"}
    assert all("slurm_extra" not in j["resources"] for j in inference)


def test_paper_training_command_lines(paper_dry_run):
    # OMP_NUM_THREADS is the job's threads (its cpus_per_task, checked above).
    commands = {
        (j["wildcards"]["experiment"], j["wildcards"]["seed"]): re.sub(r" OMP_NUM_THREADS=\d+", "", j["shell"])
        for j in dry_run_jobs(paper_dry_run)
        if j["rule"] in ("train", "inference")
    }
    env = "exec env DETECTRON2_DATASETS=datasets DCL_TOY_DATASETS=datasets/toy DCL_WEIGHTS_DIR=weights"
    # The original README's Cityscapes (COCO init) DCL command, with the workflow's own additions:
    # seed, output and results folders, local weights, --resume. (Run outside the repository, the
    # detectron2 config files are named by their absolute path.)
    assert commands[("cityscapes_coco_dcl", "2")] == (
        f"{env} dcl train --num-gpus 4 --config-file {REPO}/configs/cityscapes_mask_rcnn_R_50_FPN_coco.yaml"
        f" --resume --max-chunks 50 --keep-checkpoints 2 --results-dir results/paper/runs/cityscapes_coco_dcl/seed2 SOLVER.IMS_PER_BATCH 8"
        f" MODEL.ROI_HEADS.NAME ContrastRoIHeads MODEL.ROI_MASK_HEAD.NAME ContrastConvUpsampleHead"
        f" MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT 1.6"
        f" MODEL.WEIGHTS weights/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
        f" SEED 2 OUTPUT_DIR work_dirs/paper/cityscapes_coco_dcl/seed2 > logs/paper/train/cityscapes_coco_dcl/seed2.log 2>&1"
    )
    assert commands[("coco_dcl", "0")] == (
        f"{env} dcl train --num-gpus 4 --config-file {REPO}/configs/coco_mask_rcnn_R_50_FPN_1x.yaml"
        f" --resume --max-chunks 50 --keep-checkpoints 2 --results-dir results/paper/runs/coco_dcl/seed0 SOLVER.IMS_PER_BATCH 16"
        f" MODEL.ROI_HEADS.NAME ContrastRoIHeads MODEL.ROI_MASK_HEAD.NAME ContrastConvUpsampleHead"
        f" MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT 0.1 MODEL.WEIGHTS weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
        f" SEED 0 OUTPUT_DIR work_dirs/paper/coco_dcl/seed0 > logs/paper/train/coco_dcl/seed0.log 2>&1"
    )
    temperature = shlex.split(commands[("cityscapes_imagenet_dcl_temperature_0.2", "1")].split(" > ")[0])
    pairs = dict(
        zip(
            temperature[temperature.index("--results-dir") + 2 :: 2],
            temperature[temperature.index("--results-dir") + 3 :: 2],
        )
    )
    assert pairs["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMPERATURE"] == "0.2"
    assert pairs["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT"] == "1.2"
    assert commands[("cityscapes_imagenet_refinemask_dcl", "1")] == (
        f"{env} dcl train --num-gpus 4 --config-file {REPO}/configs/cityscapes_refinemask_R_50_FPN.yaml"
        f" --resume --max-chunks 50 --keep-checkpoints 2 --results-dir results/paper/runs/cityscapes_imagenet_refinemask_dcl/seed1"
        f" MODEL.ROI_HEADS.NAME RefineMaskROIHeads MODEL.ROI_MASK_HEAD.NAME RefineMaskContrastHead"
        f" MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT 1.4 MODEL.WEIGHTS weights/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
        f" SEED 1 OUTPUT_DIR work_dirs/paper/cityscapes_imagenet_refinemask_dcl/seed1"
        f" > logs/paper/train/cityscapes_imagenet_refinemask_dcl/seed1.log 2>&1"
    )
    released = shlex.split(commands[("released_coco_dcl", "0")].split(" > ")[0])
    assert "--eval-only" in released and "--resume" not in released
    assert (
        released[released.index("MODEL.WEIGHTS") + 1]
        == "weights/cloud.tsinghua.edu.cn/f/4298adf3b07441188430/checkpoint.pth"
    )


def test_dcl_plan_commands_are_what_the_rules_run(paper_dry_run, paper_workdir):
    """`dcl plan --commands`, run where Snakemake ran, prints each training and inference job's
    command exactly (the rules add only `exec` and the log redirection)."""
    jobs = [j for j in dry_run_jobs(paper_dry_run) if j["rule"] in ("train", "inference")]
    ran = sorted(re.fullmatch(r"exec (.*) > \S+ 2>&1", j["shell"]).group(1) for j in jobs)
    result = run_dcl("plan", REPO / "configs" / "paper.yaml", "--commands", cwd=paper_workdir)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ran and len(ran) == 67


def test_paper_evaluation_and_error_commands(paper_dry_run):
    jobs = dry_run_jobs(paper_dry_run)
    evaluate = {
        j["wildcards"]["experiment"]: j for j in jobs if j["rule"] == "evaluate" and j["wildcards"]["seed"] == "0"
    }
    assert evaluate["cityscapes_imagenet_dcl"]["shell"] == (
        "dcl evaluate work_dirs/paper/cityscapes_imagenet_dcl/seed0/inference/coco_instances_results.json"
        " -a datasets/cityscapes/annotations/instancesonly_filtered_gtFine_val.json"
        " --cityscapes-root datasets/cityscapes --split val --threads 2 -j 2"
        " -o results/paper/runs/cityscapes_imagenet_dcl/seed0/eval.json > logs/paper/evaluate/cityscapes_imagenet_dcl/seed0.log 2>&1"
    )
    assert "--cityscapes-root" not in evaluate["coco_dcl"]["shell"]
    assert " -a datasets/coco/annotations/instances_val2017.json " in evaluate["coco_dcl"]["shell"]
    errors = [j for j in jobs if j["rule"] == "errors"]
    legacy = [j for j in errors if j["wildcards"]["analysis"] == "errors_legacy"]
    assert len(legacy) == 67 and all("--legacy-unmatched" in j["shell"] for j in legacy)
    assert not any("--legacy-unmatched" in j["shell"] for j in errors if j not in legacy)
    # The original tool's GT for the legacy analysis: Detectron's conversion on Cityscapes.
    gt_of = {
        (j["wildcards"]["experiment"], j["wildcards"]["analysis"]): j["shell"].split(" -a ")[1].split()[0]
        for j in errors
        if j["wildcards"]["seed"] == "0"
    }
    assert (
        gt_of["cityscapes_imagenet_dcl", "errors_legacy"]
        == "datasets/cityscapes/annotations/instancesonly_filtered_gtFine_val.detectron.json"
    )
    assert (
        gt_of["cityscapes_imagenet_dcl", "errors"]
        == "datasets/cityscapes/annotations/instancesonly_filtered_gtFine_val.json"
    )
    assert (
        gt_of["coco_dcl", "errors_legacy"]
        == gt_of["coco_dcl", "errors"]
        == "datasets/coco/annotations/instances_val2017.json"
    )
    convert = [j for j in jobs if j["rule"] == "cityscapes_to_coco_detectron"]
    assert [j["shell"].split(" > ")[0] for j in convert] == [
        "dcl data cityscapes-to-coco datasets/cityscapes --split val --style detectron"
        " -o datasets/cityscapes/annotations/instancesonly_filtered_gtFine_val.detectron.json"
    ]
    # The workflow profile's per-rule resources (profiles/default).
    assert {(j["resources"]["cpus_per_task"], j["resources"]["mem_mb"]) for j in errors} == {("4", "20000")}
    assert {(j["resources"]["cpus_per_task"], j["resources"]["mem_mb"]) for j in evaluate.values()} == {("2", "6000")}


def test_coco_runs_are_also_scored_on_coco_occ_when_it_is_there(tmp_path):
    from dcl.workflow.experiments import Plan, read_config_file

    (tmp_path / "datasets" / "coco").mkdir(parents=True)
    (tmp_path / "datasets" / "coco" / "instances_occ2017_new.json").write_text("{}")
    result = slurm_dry_run(cwd=tmp_path, env={**ENV, "SBATCH_PARTITION": "gpuq"})
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dry_run_jobs(result.stdout + result.stderr)
    plan = Plan(read_config_file(REPO / "configs" / "paper.yaml"), repo_root=REPO, working_dir=tmp_path)
    coco_runs = {(r.experiment, str(r.seed)) for r in plan.jobs.values() if r.dataset == "coco"}
    occ = [j for j in jobs if j["rule"] == "evaluate_occ"]
    assert {(j["wildcards"]["experiment"], j["wildcards"]["seed"]) for j in occ} == coco_runs
    assert all(
        " -a datasets/coco/instances_occ2017_new.json --predictions-gt "
        "datasets/coco/annotations/instances_val2017.json " in j["shell"]
        for j in occ
    )
    analyses = Counter(j["wildcards"]["analysis"] for j in jobs if j["rule"] == "errors")
    assert analyses["errors_occ"] == analyses["errors_legacy_occ"] == len(coco_runs)
    check = next(j for j in jobs if j["rule"] == "check_dataset" and j["wildcards"]["dataset"] == "coco")
    assert "--occlusion-subset datasets/coco/instances_occ2017_new.json" in check["shell"]


def test_slurm_submission_of_a_training_job(paper_dry_run):
    """What sbatch gets for a training job: the plugin's own code on the dry-run's resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    job = next(j for j in dry_run_jobs(paper_dry_run) if j["rule"] == "train")
    resources = {key: int(value) if value.isdigit() else value for key, value in job["resources"].items()}
    fake_job = SimpleNamespace(resources=SimpleNamespace(**resources, get=resources.get), threads=1, name="train")
    validate_slurm_extra(fake_job)  # our slurm_extra uses no option the plugin manages itself
    call = get_submit_command(
        fake_job,
        {
            "run_uuid": "u",
            "slurm_logfile": "l",
            "comment_str": "c",
            "account": " -A dcl-project",
            "partition": " -p gpuq",
            "workdir": "/w",
        },
    )
    call += set_gres_string(fake_job)
    assert "--cpus-per-task=16" in call and " --gpus=4" in call and "--signal=TERM@300" in call
    assert re.search(r" -t '?(720|1440)'?", call) and re.search(r" --mem 64000", call)


def test_slurm_profile_works_from_the_repository_root_as_typed():
    # Exactly the README's command (plus -n): Snakemake finds ./slurm/ and profiles/default/.
    result = snakemake("--profile", "slurm", "-n", "--quiet", "all", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in result.stderr


def test_local_rules_run_on_the_login_node():
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )
        rules = {rule.name: rule.name in workflow._workflow._localrules for rule in workflow._workflow.rules}
    assert rules == {
        "toy_data": True,
        "check_dataset": True,
        "cityscapes_to_coco": True,
        "cityscapes_to_coco_detectron": True,
        "download_weights": True,
        "train": False,
        "inference": False,
        "evaluate": False,
        "evaluate_occ": False,
        "errors": False,
        "plan": True,
        "report": True,
        "all": True,
    }


def test_lint_is_clean():
    result = snakemake("--lint", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_every_report_output_has_a_caption():
    """The report rule's outputs are dcl.report's TABLE_NAMES / FIGURE_NAMES (imported there);
    `snakemake --report` needs a caption for each."""
    from dcl.report import FIGURE_NAMES, TABLE_NAMES

    for name in TABLE_NAMES:
        assert (REPO / "workflow" / "report" / f"table_{name}.rst").is_file()
    for name in FIGURE_NAMES:
        assert (REPO / "workflow" / "report" / f"figure_{name}.rst").is_file()


# ----------------------------------------------------------------------------- config errors
def write_config(path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "configs" / "toy.yaml").read_text())
    config["preset"] = "broken"  # no configs/broken.yaml: this file is the whole config
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["experiments"][2].update(sedds=[0, 1]),
            "experiments[2] (toy_cityscapes_refinemask_baseline): unknown key 'sedds' (did you mean 'seeds'?)",
        ),
        (
            lambda c: c["defaults"]["resources"].update(runtime="soon"),
            "defaults.resources.runtime: 'soon' is not of type 'integer'",
        ),
    ],
)
def test_a_config_typo_fails_before_anything_runs(tmp_path, change, message):
    config = write_config(tmp_path / "broken.yaml", change)
    result = snakemake("--snakefile", REPO / "Snakefile", "--configfile", config, "--cores", "1", cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"invalid {config.name}" in output
    assert message in output
    assert "Job stats" not in output and not (tmp_path / "datasets").exists() and not (tmp_path / "results").exists()


def test_missing_data_fails_in_the_first_local_rule_with_what_to_download(tmp_path):
    def coco_only(config):
        config["experiments"] = [
            {
                "name": "coco_baseline",
                "dataset": "coco",
                "init": "imagenet",
                "config": "configs/coco_mask_rcnn_R_50_FPN_1x.yaml",
                "method": "baseline",
            }
        ]
        config["ablations"] = []

    config = write_config(tmp_path / "coco.yaml", coco_only)
    result = snakemake(
        "--snakefile", REPO / "Snakefile", "--configfile", config, "--cores", "1", "--show-failed-logs", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule check_dataset" in output
    assert "instances_val2017.json" in output  # dcl data check says what is missing and where
    assert not (tmp_path / "logs" / "broken" / "train").exists()


# ----------------------------------------------------------------------------- the toy DAG, for real
LOCAL = ["--snakefile", REPO / "Snakefile", "--profile", REPO / "profiles" / "local", "--cores", "2"]


def local_run(*args, cwd: Path) -> subprocess.CompletedProcess:
    """This checkout's workflow with the local executor on 2 cores, run in ``cwd``."""
    return snakemake(*LOCAL, *args, cwd=cwd, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The whole toy DAG with the local executor (2 cores), a 20-iteration schedule."""
    workdir = tmp_path_factory.mktemp("toy")
    result = local_run("--config", "preset=toy", TOY_WORKFLOW_OVERRIDES, cwd=workdir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return workdir


@pytest.mark.e2e
def test_toy_dag_produces_every_run_file_table_and_figure(toy_run):
    from dcl.workflow.experiments import Plan, read_config_file
    from dcl.report import FIGURE_NAMES, TABLE_NAMES

    results = toy_run / "results" / "toy"
    config = read_config_file(REPO / "configs" / "toy.yaml")
    config["train_overrides"].update({"SOLVER.MAX_ITER": "20", "SOLVER.CHECKPOINT_PERIOD": "10"})  # --config merges
    expected = Plan(config, repo_root=REPO, working_dir=toy_run).document()
    assert json.loads((results / "experiments.json").read_text()) == expected
    for record in expected["runs"]:
        folder = results / record["run_dir"]
        for name in ("run.json", "metrics.json", "eval.json", "errors.json", "errors_legacy.json"):
            assert (folder / name).is_file(), folder / name
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"
        assert json.loads((folder / "run.json").read_text())["iteration"] == 20
        evaluation = json.loads((folder / "eval.json").read_text())
        assert evaluation["num_images"] == 16
        assert ("cityscapes" in evaluation) == (record["dataset"] == "toy_cityscapes")
        legacy = json.loads((folder / "errors_legacy.json").read_text())
        assert legacy["legacy_unmatched"] is True
        assert json.loads((folder / "errors.json").read_text())["legacy_unmatched"] is False
        assert legacy["gt"].endswith(".detectron.json") == (record["dataset"] == "toy_cityscapes")
        for name in ("eval_occ.json", "errors_occ.json", "errors_legacy_occ.json"):  # the toy COCO-OCC
            assert (folder / name).is_file() == (record["dataset"] == "toy_coco"), folder / name
    for name in TABLE_NAMES:
        assert (results / "tables" / f"{name}.md").is_file()
    for name in FIGURE_NAMES:
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    readme = (results / "README.md").read_text()
    assert "12 runs expected: 12 finished" in readme
    # The whole reproduction in one PDF where pdflatex is installed (CI installs it).
    assert (results / "report.pdf").is_file() == bool(shutil.which("pdflatex"))
    # Two seeds per Mask R-CNN experiment: the paired statistics are filled in, not n/a; one seed
    # per RefineMask experiment, which shares the Toy Cityscapes table.
    main = (results / "tables" / "main_results.md").read_text()
    assert main.count("| DCL − baseline | 2 pairs |") == 1 and "also evaluated and error-analysed" in readme
    cityscapes = main.split("### Toy Cityscapes")[1].split("###")[0]
    assert "| Mask R-CNN + DCL − Mask R-CNN | 2 pairs |" in cityscapes
    assert "| RefineMask | 1/1 |" in cityscapes and "| RefineMask + DCL | 1/1 |" in cityscapes
    assert "| RefineMask + DCL − RefineMask | 1 pair |" in cityscapes
    # Checkpoints and detectron2 output stay out of results/.
    assert not list(results.rglob("*.pth"))
    assert (toy_run / "work_dirs" / "toy" / "toy_coco_dcl" / "seed0" / "model_final.pth").is_file()


@pytest.mark.e2e
def test_toy_rerun_does_nothing_and_a_new_seed_runs_only_its_jobs(toy_run):
    again = local_run("--config", "preset=toy", TOY_WORKFLOW_OVERRIDES, "-n", cwd=toy_run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    config = yaml.safe_load((REPO / "configs" / "toy.yaml").read_text())
    config["defaults"]["seeds"] = [0, 3]
    (toy_run / "toy_more_seeds.yaml").write_text(yaml.safe_dump(config))
    more = local_run("--configfile", "toy_more_seeds.yaml", "--config", TOY_WORKFLOW_OVERRIDES, "-n", cwd=toy_run)
    assert more.returncode == 0, more.stderr[-3000:]
    output = more.stdout + more.stderr
    # 4 trainings of seed 3 (the ablation point keeps its seed 0), each evaluated and analysed twice;
    # the 2 toy COCO ones also on the toy COCO-OCC.
    assert job_stats(output) == {
        "train": 4,
        "evaluate": 4,
        "evaluate_occ": 2,
        "errors": 12,
        "plan": 1,
        "report": 1,
        "all": 1,
    }
    seeds = Counter(j["wildcards"].get("seed") for j in dry_run_jobs(output))
    # seed 3 of the 4 main experiments: train, evaluate, 2 analyses each; the 2 toy COCO ones also
    # evaluate_occ and 2 analyses on the toy COCO-OCC (the ablation point keeps its seed 0).
    assert seeds == Counter({"3": 22, None: 3})


@pytest.mark.e2e
def test_toy_released_checkpoint_is_evaluated_without_training(toy_run, tmp_path):
    """A `released` experiment (here: a toy checkpoint the run above trained) goes straight to
    inference, evaluation and error analysis.

    It works on its own copy of the toy run (files hard-linked, Snakemake's metadata copied), so
    the shared run keeps exactly the toy preset's runs whatever order the tests run in."""
    shared_run, toy_run = toy_run, tmp_path / "toy"
    shutil.copytree(
        shared_run, toy_run, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"), copy_function=os.link
    )
    shutil.copytree(shared_run / ".snakemake", toy_run / ".snakemake", symlinks=True)
    config = yaml.safe_load((REPO / "configs" / "toy.yaml").read_text())
    checkpoint = toy_run / "work_dirs" / "toy" / "toy_coco_baseline" / "seed0" / "model_final.pth"
    released = toy_run / "released.pth"
    shutil.copy(checkpoint, released)
    config["released"] = [
        {
            "name": "toy_coco_released",
            "dataset": "toy_coco",
            "init": "scratch",
            "config": "configs/toy_coco_mask_rcnn_R18_FPN.yaml",
            "method": "baseline",
            "weights": str(released),
        }
    ]
    (toy_run / "toy_released.yaml").write_text(yaml.safe_dump(config))
    result = local_run("--configfile", "toy_released.yaml", "--config", TOY_WORKFLOW_OVERRIDES, cwd=toy_run)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    # A toy COCO checkpoint: also scored on the toy COCO-OCC (one evaluation, two analyses).
    assert job_stats(output) == {
        "inference": 1,
        "evaluate": 1,
        "evaluate_occ": 1,
        "errors": 4,
        "plan": 1,
        "report": 1,
        "all": 1,
    }
    folder = toy_run / "results" / "toy" / "runs" / "toy_coco_released" / "seed0"
    run = json.loads((folder / "run.json").read_text())
    assert run["mode"] == "eval-only" and run["status"] == "finished"
    # The same weights on the same data: the released run's AP is the trained run's.
    trained = json.loads(
        (toy_run / "results" / "toy" / "runs" / "toy_coco_baseline" / "seed0" / "eval.json").read_text()
    )
    assert json.loads((folder / "eval.json").read_text())["segm"] == trained["segm"]


# ----------------------------------------------------------------------------- hostile paths
# Shell metacharacters and spaces in every user-chosen path: each must reach its command as one
# quoted word, never as shell code (a `pwned` file anywhere means a command ran it).
HOSTILE = {
    "results_dir": "res $(touch pwned)",
    "work_dir": "work `touch pwned`; x",
    "datasets_root": "data $(touch pwned) &",
    "weights_dir": "w $(touch pwned)|",
}


def hostile_config(path: Path, *, cityscapes: bool) -> Path:
    def change(config):
        config.update(HOSTILE, published=None)
        if cityscapes:  # a Cityscapes run with downloaded weights: cityscapes_to_coco and download_weights
            config["weights"] = {"w": {"url": "http://127.0.0.1:9/x/y$(touch%20pwned).pkl"}}
            config["experiments"].append(
                {
                    "name": "cs",
                    "dataset": "cityscapes",
                    "init": "imagenet",
                    "weights": "w",
                    "config": "configs/cityscapes_mask_rcnn_R_50_FPN.yaml",
                    "method": "baseline",
                }
            )

    return write_config(path, change)


def test_hostile_paths_are_one_word_in_every_command(tmp_path):
    config = hostile_config(tmp_path / "hostile.yaml", cityscapes=True)
    result = snakemake(
        "--snakefile", REPO / "Snakefile", "--configfile", config, "-n", "-p", "--cores", "1", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = dry_run_jobs(output)
    assert {j["rule"] for j in jobs} >= {
        "toy_data",
        "check_dataset",
        "cityscapes_to_coco",
        "download_weights",
        "train",
        "evaluate",
        "errors",
        "plan",
        "report",
    }
    for job in jobs:
        if job["shell"] in ("", "None"):  # rule all
            continue
        words = shlex.split(job["shell"])  # as bash splits it, quotes removed
        # Every word that holds a piece of a hostile path holds the whole of it (here: at the start).
        for word in words:
            if "pwned" in word and "://" not in word:
                value = word.split("=", 1)[1] if re.match(r"[A-Z_0-9]+=", word) else word
                assert any(value.startswith(d) for d in HOSTILE.values()) or "/y$(touch pwned).pkl" in value, (
                    word,
                    job["shell"],
                )
        assert "2>&1" in words and words.count(">") == 1, job["shell"]  # no redirection came from a path
    plan = next(j for j in jobs if j["rule"] == "plan")
    assert shlex.split(plan["shell"])[-4] == "res $(touch pwned)/broken/experiments.json"


def test_hostile_paths_run_the_first_rules_and_nothing_else(tmp_path):
    config = hostile_config(tmp_path / "hostile.yaml", cityscapes=False)
    result = snakemake(
        "--snakefile",
        REPO / "Snakefile",
        "--configfile",
        config,
        "--until",
        "plan",
        "check_dataset",
        "--cores",
        "1",
        cwd=tmp_path,
        timeout=TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not list(tmp_path.rglob("pwned")) and not list(REPO.rglob("pwned"))
    assert json.loads((tmp_path / HOSTILE["results_dir"] / "broken" / "experiments.json").read_text())["runs"]
    for dataset in ("toy_coco", "toy_cityscapes"):
        assert (tmp_path / HOSTILE["work_dir"] / "broken" / "data" / f"{dataset}.check.json").is_file()
    assert (tmp_path / HOSTILE["datasets_root"] / "toy" / "coco").is_dir()


@pytest.mark.e2e
def test_toy_dag_with_a_failing_run_still_reports_everything_that_finished(toy_run):
    """One experiment fails (an unknown backbone: it fails at set-up, exit 1): with keep-going the
    workflow exits non-zero, and Snakemake's onerror hook has written the tables, figures and
    README for every finished run, naming the failed one with its reason and log."""
    config = yaml.safe_load((REPO / "configs" / "toy.yaml").read_text())
    config["experiments"].append(
        {
            "name": "toy_coco_broken",
            "dataset": "toy_coco",
            "init": "scratch",
            "config": "configs/toy_coco_mask_rcnn_R18_FPN.yaml",
            "method": "baseline",
            "seeds": [0],
            "overrides": {"MODEL.BACKBONE.NAME": "build_no_such_backbone"},
        }
    )
    (toy_run / "toy_broken.yaml").write_text(yaml.safe_dump(config))
    results = toy_run / "results" / "toy"
    before = (results / "README.md").stat().st_mtime
    result = local_run(
        "--keep-going", "--configfile", "toy_broken.yaml", "--config", TOY_WORKFLOW_OVERRIDES, cwd=toy_run
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-5000:]
    assert "Error in rule train" in output and "some runs failed; the report of what finished" in output
    readme = (results / "README.md").read_text()
    assert (results / "README.md").stat().st_mtime > before
    # The 12 runs of the toy matrix (the released one of the test above is not in this config) and the broken one.
    assert "13 runs expected: 12 finished, 0 running, 0 incomplete, 1 failed, 0 missing." in readme
    failed = next(line for line in readme.splitlines() if line.startswith("- `toy_coco_broken` seed 0"))
    assert "**failed**" in failed and "build_no_such_backbone" in failed
    assert (
        "log: logs/toy/train/toy_coco_broken/seed0.log" in failed
        and (toy_run / "logs/toy/train/toy_coco_broken/seed0.log").is_file()
    )
    with open(results / "tables" / "run_inventory.csv", newline="") as handle:
        inventory = {row["experiment"]: row["status"] for row in csv.DictReader(handle)}
    assert inventory == {
        **{run["experiment"]: "finished" for run in json.loads((results / "experiments.json").read_text())["runs"]},
        "toy_coco_broken": "failed",
    }
    # The finished runs' numbers are in the tables: per dataset, a baseline and a DCL row with every seed
    # (Toy Cityscapes: of Mask R-CNN, named beside RefineMask, and of RefineMask).
    sections = (results / "tables" / "main_results.md").read_text().split("\n### ")[1:]
    by_dataset = {section.split(",")[0]: section for section in sections}
    assert set(by_dataset) == {"Toy COCO", "Toy Cityscapes"}
    coco, cityscapes = by_dataset["Toy COCO"], by_dataset["Toy Cityscapes"]
    assert "| Baseline | 2/2 |" in coco and "| DCL | 2/2 |" in coco
    assert "| Mask R-CNN | 2/2 |" in cityscapes and "| Mask R-CNN + DCL | 2/2 |" in cityscapes
    assert "| RefineMask | 1/1 |" in cityscapes and "| RefineMask + DCL | 1/1 |" in cityscapes
    for name in ("training_curves", "error_breakdown", "ablations"):
        assert (results / "figures" / f"{name}.png").stat().st_mtime > before
    assert not list((results / "runs").glob("toy_coco_broken/seed0/*"))  # the report writes no run files
