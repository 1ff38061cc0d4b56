"""The workflow config: schema validation messages, expansion into runs, `dcl train` command lines,
experiments.json, and `dcl plan`.

Expected run lists and command lines are written out here by hand from the paper's recipes (the
original README's commands), never computed with dcl.workflow.experiments itself; experiments.json is also
read back with the report's own strict reader (an independent consumer of the format).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import shlex
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from dcl.workflow.experiments import (
    Plan,
    format_override_value,
    load_workflow_config,
    merge_config,
    parse_config_assignment,
    read_config_file,
)
from dcl.workflow.plan import checkout_root
from dcl.io import InputError
from instance_fixtures import run_dcl

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "configs" / "paper.yaml"
TOY = REPO / "configs" / "toy.yaml"

CITYSCAPES = "configs/cityscapes_mask_rcnn_R_50_FPN.yaml"
CITYSCAPES_COCO = "configs/cityscapes_mask_rcnn_R_50_FPN_coco.yaml"
COCO = "configs/coco_mask_rcnn_R_50_FPN_1x.yaml"
R50 = "weights/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
COCO_3X = "weights/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
DCL_HEADS = ["MODEL.ROI_HEADS.NAME", "ContrastRoIHeads", "MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"]


def paper_plan(**changes) -> Plan:
    config = read_config_file(PAPER)
    config.update(changes)
    return Plan(config, "configs/paper.yaml", repo_root=REPO, working_dir=REPO)


def minimal_config(tmp_path: Path, **changes) -> dict:
    """A small valid config whose detectron2 config file exists under ``tmp_path``."""
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "model.yaml").write_text("MODEL: {}\n")
    config = {
        "preset": "unit",
        "datasets_root": "datasets",
        "weights_dir": "weights",
        "work_dir": "work_dirs",
        "results_dir": "results",
        "published": None,
        "train_overrides": {},
        "evaluation": {"backend": None},
        "defaults": {"seeds": [0, 1], "resources": {"gpus": 1, "cpus": 4, "mem_mb": 8000, "runtime": 60}},
        "weights": {"r50": {"url": "detectron2://ImageNetPretrained/MSRA/R-50.pkl"}},
        "experiments": [
            {
                "name": "base",
                "dataset": "coco",
                "init": "imagenet",
                "config": "configs/model.yaml",
                "method": "baseline",
                "weights": "r50",
            },
            {
                "name": "contrast",
                "dataset": "cityscapes",
                "init": "imagenet",
                "config": "configs/model.yaml",
                "method": "dcl",
                "dcl": {"LOSS_WEIGHT": 1.2},
                "weights": "r50",
            },
        ],
        "ablations": [],
        "released": [],
    }
    config.update(copy.deepcopy(changes))
    return config


def problems(tmp_path: Path, config: dict) -> str:
    with pytest.raises(InputError) as caught:
        Plan(config, "unit.yaml", repo_root=tmp_path, working_dir=tmp_path)
    return str(caught.value)


# ----------------------------------------------------------------------------- the paper matrix
def test_paper_matrix_has_every_run_of_the_paper():
    plan = paper_plan()
    trained = {(r.experiment, r.seed) for r in plan.train_jobs}
    main = [
        f"{d}_{m}"
        for d in ("cityscapes_imagenet", "cityscapes_coco", "coco", "cityscapes_imagenet_refinemask")
        for m in ("baseline", "dcl")
    ]
    sweeps = {
        "loss_weight": ["0.4", "0.8", "1.6", "2.0"],
        "num_samples": ["8", "16", "64"],
        "temperature": ["0.03", "0.1", "0.2", "0.5"],
        "with_proj": ["off"],
    }
    ablated = [f"cityscapes_imagenet_dcl_{p}_{v}" for p, values in sweeps.items() for v in values]
    # 3 settings + RefineMask x 2 methods x 3 seeds, plus 12 new ablation points x 3 seeds (the sweep values
    # equal to the base's 1.2 / 32 / 0.07 / on are the base's own runs).
    assert trained == {(name, seed) for name in main + ablated for seed in (0, 1, 2)}
    assert len(trained) == 60
    assert {r.experiment for r in plan.released_jobs} == {
        "modelzoo_coco_mask_rcnn_R_50_FPN_1x",
        "modelzoo_coco_mask_rcnn_R_50_FPN_3x",
        "modelzoo_coco_mask_rcnn_R_101_FPN_3x",
        "modelzoo_cityscapes_mask_rcnn_R_50_FPN",
        "released_cityscapes_imagenet_dcl",
        "released_cityscapes_coco_dcl",
        "released_coco_dcl",
    }
    assert all(r.seed == 0 for r in plan.released_jobs)


def test_paper_refinemask_runs_use_the_refinemask_heads_and_recipe():
    plan = paper_plan()
    for method, mask_head in (("baseline", "RefineMaskHead"), ("dcl", "RefineMaskContrastHead")):
        run_ = plan.run(f"cityscapes_imagenet_refinemask_{method}", 1)
        assert run_.model == "refinemask" and run_.record()["model"] == "refinemask"
        pairs = dict(run_.overrides)
        assert pairs["MODEL.ROI_HEADS.NAME"] == "RefineMaskROIHeads" and pairs["MODEL.ROI_MASK_HEAD.NAME"] == mask_head
        assert pairs.get("MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT") == ("1.4" if method == "dcl" else None)
        assert run_.config_file.endswith("configs/cityscapes_refinemask_R_50_FPN.yaml")
        assert run_.weights_file == "weights/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
        assert (run_.resources.gpus, run_.resources.runtime) == (4, 1080)
    # Mask R-CNN runs keep the original README's command lines: no head names for the baseline.
    assert "MODEL.ROI_HEADS.NAME" not in dict(plan.run("cityscapes_imagenet_baseline", 0).overrides)
    assert plan.run("cityscapes_imagenet_baseline", 0).record()["model"] == "mask_rcnn"


def test_paper_models_name_their_backbone_and_schedule():
    """What the report matches published numbers on: the model zoo's checkpoints are three
    models (R50-FPN 1x and 3x, R101-FPN 3x), the trained COCO models the 1x recipe's."""
    plan = paper_plan()
    network = {r.experiment: (r.record()["backbone"], r.record()["schedule"]) for r in plan.runs}
    assert network["modelzoo_coco_mask_rcnn_R_50_FPN_1x"] == ("R50-FPN", "1x")
    assert network["modelzoo_coco_mask_rcnn_R_50_FPN_3x"] == ("R50-FPN", "3x")
    assert network["modelzoo_coco_mask_rcnn_R_101_FPN_3x"] == ("R101-FPN", "3x")
    assert network["coco_baseline"] == network["coco_dcl"] == network["released_coco_dcl"] == ("R50-FPN", "1x")
    # Cityscapes recipes have no schedule name; ablation points are their base's network.
    assert {network[r.experiment] for r in plan.runs if r.dataset == "cityscapes"} == {("R50-FPN", None)}


def test_paper_ablation_points_at_the_base_value_reuse_the_base_runs():
    document = paper_plan().document()
    by_name = {}
    for record in document["runs"]:
        by_name.setdefault(record["experiment"], []).append(record)
    for parameter, value, slug in (
        ("LOSS_WEIGHT", 1.2, "1.2"),
        ("NUM_SAMPLES", 32, "32"),
        ("TEMPERATURE", 0.07, "0.07"),
        ("WITH_PROJ", True, "on"),
    ):
        records = by_name[f"cityscapes_imagenet_dcl_{parameter.lower()}_{slug}"]
        assert [r["run_dir"] for r in records] == [f"runs/cityscapes_imagenet_dcl/seed{s}" for s in (0, 1, 2)]
        assert all(
            r["ablation"]
            == {
                "parameter": parameter,
                "key": f"MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.{parameter}",
                "value": value,
                "base": "cityscapes_imagenet_dcl",
            }
            for r in records
        )
        assert all(r["group"] == "ablation" and r["kind"] == "train" for r in records)
    # Every sweep lists all its values: 5 + 4 + 5 + 2 points x 3 seeds.
    assert sum(r["group"] == "ablation" for r in document["runs"]) == 16 * 3


def test_paper_train_command_is_the_original_readme_recipe():
    plan = paper_plan()
    arguments = plan.train_arguments(plan.run("cityscapes_coco_dcl", 1))
    assert arguments == [
        "--config-file",
        CITYSCAPES_COCO,
        "--resume",
        "--max-chunks",
        "50",
        "--keep-checkpoints",
        "2",
        "--results-dir",
        "results/paper/runs/cityscapes_coco_dcl/seed1",
        "SOLVER.IMS_PER_BATCH",
        "8",
        *DCL_HEADS,
        "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT",
        "1.6",
        "MODEL.WEIGHTS",
        COCO_3X,
        "SEED",
        "1",
        "OUTPUT_DIR",
        "work_dirs/paper/cityscapes_coco_dcl/seed1",
    ]
    arguments = plan.train_arguments(plan.run("coco_baseline", 0))
    assert arguments == [
        "--config-file",
        COCO,
        "--resume",
        "--max-chunks",
        "50",
        "--keep-checkpoints",
        "2",
        "--results-dir",
        "results/paper/runs/coco_baseline/seed0",
        "SOLVER.IMS_PER_BATCH",
        "16",
        "MODEL.WEIGHTS",
        R50,
        "SEED",
        "0",
        "OUTPUT_DIR",
        "work_dirs/paper/coco_baseline/seed0",
    ]
    arguments = plan.train_arguments(plan.run("cityscapes_imagenet_dcl_with_proj_off", 2))
    assert arguments[arguments.index("MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT") :][:4] == [
        "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT",
        "1.2",
        "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.WITH_PROJ",
        "False",
    ]


def test_max_chunks_and_kept_checkpoints_come_from_the_workflow_config():
    config = read_config_file(TOY)
    config.update(max_chunks=7, keep_checkpoints=1)
    plan = Plan(config, repo_root=REPO, working_dir=REPO)
    arguments = plan.train_arguments(plan.run("toy_coco_dcl", 0))
    assert arguments[arguments.index("--max-chunks") + 1] == "7"
    assert arguments[arguments.index("--keep-checkpoints") + 1] == "1"


def test_paper_released_checkpoints_are_evaluated_not_trained():
    plan = paper_plan()
    run = plan.run("modelzoo_coco_mask_rcnn_R_101_FPN_3x", 0)
    assert plan.train_arguments(run) == [
        "--config-file",
        COCO,
        "--eval-only",
        "--results-dir",
        "results/paper/runs/modelzoo_coco_mask_rcnn_R_101_FPN_3x/seed0",
        "MODEL.RESNETS.DEPTH",
        "101",
        "MODEL.WEIGHTS",
        "weights/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/138205316/model_final_a3ec72.pkl",
        "SEED",
        "0",
        "OUTPUT_DIR",
        "work_dirs/paper/modelzoo_coco_mask_rcnn_R_101_FPN_3x/seed0",
    ]
    run = plan.run("released_cityscapes_imagenet_dcl", 0)
    assert plan.train_arguments(run)[2:9] == [
        "--eval-only",
        "--results-dir",
        "results/paper/runs/released_cityscapes_imagenet_dcl/seed0",
        *DCL_HEADS,
    ]
    assert run.weights_file == "weights/cloud.tsinghua.edu.cn/f/25b641d7ea2f4b34ac82/checkpoint.pth"
    # Every checkpoint the runs use is downloaded (once) by the workflow, none that is unused.
    assert len(plan.downloads) == 9
    assert plan.downloads[R50] == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


def test_paper_resources_follow_the_recipes():
    plan = paper_plan()
    assert plan.run("cityscapes_imagenet_dcl", 0).resources.gpus == 4
    assert plan.run("cityscapes_imagenet_dcl", 0).resources.runtime == 720
    assert plan.run("coco_dcl", 2).resources.runtime == 1440
    assert plan.run("coco_dcl", 2).resources.mem_mb == 64000  # the loader no longer copies the data per worker
    assert plan.run("released_coco_dcl", 0).resources.gpus == 1


def test_experiments_json_is_what_the_report_reads(tmp_path):
    from dcl.runs import load_experiments

    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(paper_plan().document()))
    preset, runs = load_experiments(path)
    assert preset == "paper"
    assert len(runs) == 24 + 48 + 7
    first = json.loads(path.read_text())["runs"][0]
    assert first == {
        "experiment": "cityscapes_imagenet_baseline",
        "seed": 0,
        "kind": "train",
        "dataset": "cityscapes",
        "init": "imagenet",
        "method": "baseline",
        "model": "mask_rcnn",
        "backbone": "R50-FPN",
        "schedule": None,
        "group": "main",
        "ablation": None,
        "metric": "cityscapes.AP",
        "run_dir": "runs/cityscapes_imagenet_baseline/seed0",
        # the live run.json and the logs, relative to results/paper (the working
        # directory holds results/, work_dirs/ and logs/)
        "output_dir": "../../work_dirs/paper/cityscapes_imagenet_baseline/seed0",
        "logs": {
            step: f"../../logs/paper/{step}/cityscapes_imagenet_baseline/seed0.log"
            for step in ("train", "evaluate", "errors", "errors_legacy")
        },
    }
    metrics = {r.experiment: r.metric for r in runs}
    assert {r.model for r in runs if "refinemask" in r.experiment} == {"refinemask"}
    assert metrics["coco_dcl"] == "segm.AP" and metrics["modelzoo_cityscapes_mask_rcnn_R_50_FPN"] == "cityscapes.AP"


@pytest.mark.parametrize("config", ["toy", "paper", "toy_own_method"])
def test_every_run_record_reads_back_as_the_run_the_planner_made(tmp_path, config):
    """dcl.runs owns the record: what the planner writes, load_experiments reads back field for field."""
    from dcl.runs import ExpectedRun, load_experiments

    plan = Plan(read_config_file(REPO / "configs" / f"{config}.yaml"), repo_root=REPO, working_dir=REPO)
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(plan.document()))
    read = load_experiments(path)[1]
    assert [r.to_record() for r in read] == [r.record() for r in plan.runs]
    fields = {f.name for f in dataclasses.fields(ExpectedRun)} - {"output_dir", "logs"}
    own = {"method_label", "baseline", "dcl_on_top"}  # written only for a method of one's own
    for run_ in read:
        assert set(run_.to_record()) == fields - own if run_.method_label is None else fields - {"dcl_on_top"}


def test_experiments_json_locates_work_dirs_and_logs_from_wherever_it_is_read(tmp_path, monkeypatch):
    """output_dir and logs are relative to experiments.json's folder (absolute for an absolute
    work_dir), and the report resolves them to the rule's paths from the working directory."""
    from dcl.runs import load_experiments

    monkeypatch.chdir(tmp_path)
    plan = Plan(read_config_file(TOY), repo_root=REPO, working_dir=tmp_path)
    path = tmp_path / plan.results / "experiments.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(plan.document()))
    run_ = plan.run("toy_coco_dcl", 0)
    expected = {(r.experiment, r.seed): r for r in load_experiments(Path(plan.results) / "experiments.json")[1]}
    read = expected[("toy_coco_dcl_loss_weight_1.2", 0)]  # an ablation point trained by its base run
    assert read.output_dir == plan.output_dir(run_) == "work_dirs/toy/toy_coco_dcl/seed0"
    assert read.logs["train"] == plan.log_pattern("train").format(experiment="toy_coco_dcl", seed=0)
    assert read.logs == {
        step: f"logs/toy/{step}/toy_coco_dcl/seed0.log" for step in ("train", "evaluate", "errors", "errors_legacy")
    }
    # From elsewhere, the same files.
    monkeypatch.chdir(tmp_path / "results")
    elsewhere = load_experiments(Path("toy/experiments.json"))[1][0]
    assert (
        Path(elsewhere.output_dir).resolve()
        == (tmp_path / plan.output_dir(plan.run(elsewhere.experiment, elsewhere.seed))).resolve()
    )
    # An absolute work directory stays absolute; a released checkpoint's log is its inference log.
    config = read_config_file(TOY)
    config["work_dir"] = str(tmp_path / "scratch")
    config["released"] = [
        {
            "name": "toy_released",
            "dataset": "toy_coco",
            "init": "scratch",
            "config": "configs/toy_coco_mask_rcnn_R18_FPN.yaml",
            "method": "baseline",
            "weights": "model.pth",
        }
    ]
    records = {
        (r["experiment"], r["seed"]): r for r in Plan(config, repo_root=REPO, working_dir=tmp_path).document()["runs"]
    }
    assert records["toy_coco_dcl", 1]["output_dir"] == str(tmp_path / "scratch/toy/toy_coco_dcl/seed1")
    assert records["toy_released", 0]["logs"]["inference"] == "../../logs/toy/inference/toy_released/seed0.log"


def test_toy_preset_runs_on_the_cpu():
    plan = Plan(read_config_file(TOY), "configs/toy.yaml", repo_root=REPO, working_dir=REPO)
    assert {r.dataset for r in plan.jobs.values()} == {"toy_coco", "toy_cityscapes"}
    assert all(r.resources.gpus == 0 and r.weights_file is None for r in plan.jobs.values())
    command = shlex.split(plan.train_command(plan.run("toy_coco_dcl", 0)))
    assert command[:5] == [
        "env",
        "DETECTRON2_DATASETS=datasets",
        "DCL_TOY_DATASETS=datasets/toy",
        "DCL_WEIGHTS_DIR=weights",
        "OMP_NUM_THREADS=1",
    ]
    assert command[5:9] == ["dcl", "train", "--num-gpus", "1"]


def test_global_overrides_come_last_so_they_win():
    # In key order, whatever order the config layers put them in (the command is a rerun trigger).
    plan = paper_plan(train_overrides={"TEST.EVAL_PERIOD": "0", "SOLVER.MAX_ITER": 20, "SOLVER.STEPS": [10, 15]})
    arguments = plan.train_arguments(plan.run("coco_dcl", 0))
    assert arguments[-12:] == [
        "MODEL.WEIGHTS",
        R50,
        "SOLVER.MAX_ITER",
        "20",
        "SOLVER.STEPS",
        "[10, 15]",
        "TEST.EVAL_PERIOD",
        "0",
        "SEED",
        "0",
        "OUTPUT_DIR",
        "work_dirs/paper/coco_dcl/seed0",
    ]


def test_digest_changes_exactly_with_the_run_list():
    assert paper_plan().digest() == paper_plan().digest()
    # Resources and overrides do not change experiments.json; seeds do.
    assert paper_plan(train_overrides={"SOLVER.MAX_ITER": 20}).digest() == paper_plan().digest()
    config = read_config_file(PAPER)
    config["defaults"]["seeds"] = [0, 1, 2, 3]
    assert Plan(config, repo_root=REPO, working_dir=REPO).digest() != paper_plan().digest()


# ----------------------------------------------------------------------------- ablations
def test_ablation_point_with_other_seeds_than_its_base_is_trained(tmp_path):
    config = minimal_config(
        tmp_path, ablations=[{"base": "contrast", "parameter": "LOSS_WEIGHT", "values": [1.2, 2.0], "seeds": [0, 5]}]
    )
    plan = Plan(config, repo_root=tmp_path, working_dir=tmp_path)
    assert {(r.experiment, r.seed) for r in plan.train_jobs} == {
        ("base", 0),
        ("base", 1),
        ("contrast", 0),
        ("contrast", 1),
        ("contrast_loss_weight_1.2", 0),
        ("contrast_loss_weight_1.2", 5),
        ("contrast_loss_weight_2.0", 0),
        ("contrast_loss_weight_2.0", 5),
    }


def test_ablation_of_a_default_parameter_shares_the_base_runs(tmp_path):
    # NUM_SAMPLES is not set by the base: its effective value is the loss's default, 32.
    config = minimal_config(tmp_path, ablations=[{"base": "contrast", "parameter": "NUM_SAMPLES", "values": [16, 32]}])
    plan = Plan(config, repo_root=tmp_path, working_dir=tmp_path)
    dirs = {(r.experiment, r.seed): r.run_dir for r in plan.runs if r.group == "ablation"}
    assert dirs == {
        ("contrast_num_samples_16", 0): "runs/contrast_num_samples_16/seed0",
        ("contrast_num_samples_16", 1): "runs/contrast_num_samples_16/seed1",
        ("contrast_num_samples_32", 0): "runs/contrast/seed0",
        ("contrast_num_samples_32", 1): "runs/contrast/seed1",
    }
    arguments = plan.train_arguments(plan.run("contrast_num_samples_16", 1))
    pairs = dict(zip(arguments[5::2], arguments[6::2]))
    assert pairs["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.NUM_SAMPLES"] == "16"
    assert pairs["MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT"] == "1.2"


# ----------------------------------------------------------------------------- schema messages
@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c.update(seedz=[0]), "top level: unknown key 'seedz'"),
        # Several unknown keys in one place: one message, each key once, "; " between them.
        (
            lambda c: c["experiments"][1].update(zzzz=1, qqqq=2),
            "experiments[1] (contrast): unknown key 'zzzz'; unknown key 'qqqq'; allowed keys: ",
        ),
        (
            lambda c: c["experiments"][1].update(sedds=[0]),
            "experiments[1] (contrast): unknown key 'sedds' (did you mean 'seeds'?)",
        ),
        (
            lambda c: c["experiments"][0].update(seeds=["a"]),
            "experiments[0] (base).seeds[0]: 'a' is not of type 'integer'",
        ),
        (
            lambda c: c["experiments"][0].update(dataset="cityscape"),
            "experiments[0] (base).dataset: 'cityscape' is not one of",
        ),
        (
            lambda c: c["experiments"][1]["dcl"].update(LOSS_WIEGHT=1),
            "unknown key 'LOSS_WIEGHT' (did you mean 'LOSS_WEIGHT'?)",
        ),
        (
            lambda c: c["experiments"][1]["dcl"].update(TEMPERATURE=0),
            "experiments[1] (contrast).dcl.TEMPERATURE: 0 is less than or equal",
        ),
        (
            lambda c: c["defaults"]["resources"].update(gpus="4"),
            "defaults.resources.gpus: '4' is not of type 'integer'",
        ),
        (lambda c: c["defaults"]["resources"].pop("runtime"), "defaults.resources: 'runtime' is a required property"),
        (lambda c: c.pop("released"), "top level: 'released' is a required property"),
        (
            lambda c: c["experiments"][0].update(overrides={"solver.max_iter": 5}),
            "key 'solver.max_iter' is not allowed",
        ),
        (lambda c: c["weights"]["r50"].update(url="ftp://x/y.pkl"), "weights.r50.url: 'ftp://x/y.pkl' does not match"),
        (
            lambda c: c["experiments"][0].update(seeds=[2**32]),
            "experiments[0] (base).seeds[0]: 4294967296 is greater than the maximum of 4294967295",
        ),
        (lambda c: c["experiments"][0].update(schedule="90k"), "experiments[0] (base).schedule: '90k' does not match"),
        (lambda c: c["experiments"][0].update(backbone=""), "experiments[0] (base).backbone: '' does not match"),
    ],
)
def test_schema_errors_say_where_and_what(tmp_path, change, expected):
    config = minimal_config(tmp_path)
    change(config)
    message = problems(tmp_path, config)
    assert message.startswith("invalid unit.yaml:\n  - ")
    assert expected in message


def test_every_schema_error_is_reported_at_once(tmp_path):
    config = minimal_config(tmp_path)
    config["experiments"][0]["sedds"] = [0]
    config["defaults"]["seeds"] = []
    message = problems(tmp_path, config)
    assert "experiments[0] (base): unknown key 'sedds'" in message
    assert "defaults.seeds: [] should be non-empty" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda c: c["experiments"][0].update(dcl={"LOSS_WEIGHT": 1.0}),
            "experiments[0] (base): `dcl` settings need `method: dcl` (method is baseline)",
        ),
        (lambda c: c["experiments"][0].update(overrides={"SEED": 3}), "override SEED is set by the workflow"),
        (
            lambda c: c["experiments"][0].update(overrides={"MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.TEMPERATURE": 0.1}),
            "put it in the experiment's `dcl` mapping as TEMPERATURE",
        ),
        (
            lambda c: c["experiments"][0].update(seeds=[2**32 - 2], resources={"gpus": 4}),
            "experiments[0] (base): seed 4294967294 + one per GPU (4) exceeds numpy's seed range (below 2^32)",
        ),
        (
            lambda c: c["experiments"][1].update(name="base"),
            "experiment name 'base' is already used by experiments[0] (base)",
        ),
        (
            lambda c: c["experiments"][0].update(weights="https://example.org/model.pth"),
            "declare it in the top-level `weights` table",
        ),
        (
            lambda c: c["experiments"][0].update(overrides={"MODEL.RESNETS.DEPTH": 101}),
            "experiments[0] (base): backbone R50-FPN (default R50-FPN) but MODEL.RESNETS.DEPTH is 101",
        ),
        (
            lambda c: c["experiments"][0].update(overrides={"MODEL.RESNETS.DEPTH": 50}, backbone="R101-FPN"),
            "backbone R101-FPN (default R50-FPN) but MODEL.RESNETS.DEPTH is 50",
        ),
        (
            lambda c: c["experiments"][0].update(config="configs/missing.yaml"),
            "detectron2 config file configs/missing.yaml does not exist",
        ),
        (
            lambda c: c.update(ablations=[{"base": "nope", "parameter": "LOSS_WEIGHT", "values": [1.0]}]),
            "ablations[0] (nope LOSS_WEIGHT): base 'nope' is not one of the `experiments` (known: base, contrast)",
        ),
        (
            lambda c: c.update(ablations=[{"base": "base", "parameter": "LOSS_WEIGHT", "values": [1.0]}]),
            "base 'base' has method baseline",
        ),
        (
            lambda c: c.update(ablations=[{"base": "contrast", "parameter": "NUM_SAMPLES", "values": [0.5]}]),
            "ablations[0] (contrast NUM_SAMPLES) value 0.5: 0.5 is not of type 'integer'",
        ),
        (
            lambda c: c.update(ablations=[{"base": "contrast", "parameter": "WITH_PROJ", "values": [1]}]),
            "value 1: 1 is not of type 'boolean'",
        ),
    ],
)
def test_rules_the_schema_cannot_express(tmp_path, change, expected):
    config = minimal_config(tmp_path)
    change(config)
    assert expected in problems(tmp_path, config)


def test_a_valid_config_passes(tmp_path):
    plan = Plan(minimal_config(tmp_path), repo_root=tmp_path, working_dir=tmp_path)
    assert [(r.experiment, r.seed) for r in plan.runs] == [("base", 0), ("base", 1), ("contrast", 0), ("contrast", 1)]


# ----------------------------------------------------------------------------- config layering
@pytest.mark.parametrize(
    "text",
    [
        "seeds=[0, 1]",
        "preset=toy",
        "key=3",
        "key=0.5",
        "key=true",
        "key=False",
        "train_overrides={SOLVER.MAX_ITER: 5}",
        "key=",
        "key=a=b",
        "key=[unclosed",
    ],
)
def test_config_assignments_parse_like_snakemake(text):
    from snakemake.cli import parse_config

    assert parse_config_assignment(text) == parse_config([text])


def test_config_files_layer_like_snakemake(tmp_path):
    from snakemake.utils import update_config

    a = {"preset": "a", "defaults": {"seeds": [0], "resources": {"gpus": 1, "cpus": 2}}, "weights": {"x": {"url": "u"}}}
    b = {"defaults": {"resources": {"gpus": 2}, "seeds": [3, 4]}, "experiments": [], "weights": {"y": {"url": "v"}}}
    expected = copy.deepcopy(a)
    update_config(expected, b)
    update_config(expected, {"preset": "c"})
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    assert load_workflow_config([tmp_path / "a.yaml", tmp_path / "b.yaml"], ["preset=c"]) == expected
    assert merge_config({"k": [1, 2]}, {"k": [3]}) == {"k": [3]}


def test_unreadable_config_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="workflow config not found: .*nope.yaml"):
        read_config_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("preset: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml is not valid YAML"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(InputError, match="expected a mapping"):
        read_config_file(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "value", [True, False, 3, 0.07, 1e-4, "ContrastRoIHeads", [18000], [800, 832], ["a_train", "b"]]
)
def test_override_values_read_back_as_detectron2_reads_them(value):
    text = format_override_value(value)
    if isinstance(value, str):
        assert text == value  # yacs keeps a string that is not a Python literal as it is
    else:
        assert ast.literal_eval(text) == value


# ----------------------------------------------------------------------------- dcl plan
def test_dcl_plan_writes_experiments_json(tmp_path):
    output = tmp_path / "out" / "experiments.json"
    result = run_dcl("plan", "configs/paper.yaml", "-o", output, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text()) == paper_plan().document()
    assert "preset paper: 79 runs in experiments.json; 60 to train, 7 released checkpoints" in result.stdout


def test_dcl_plan_prints_the_commands(tmp_path):
    result = run_dcl(
        "plan", "configs/toy.yaml", "--config", "train_overrides={SOLVER.MAX_ITER: 7}", "--commands", cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # 4 Mask R-CNN experiments x 2 seeds, 2 RefineMask experiments x 1 seed, 1 new ablation point (seed 0)
    assert len(lines) == 11
    # --config merges into the preset's train_overrides (60 iterations, LR step at 50, warm-up 20).
    seeds = []
    for line in lines:
        words = shlex.split(line)
        assert words[5:7] == ["dcl", "train"]
        assert (
            words[-10:-3] == ["SOLVER.MAX_ITER", "7", "SOLVER.STEPS", "[50]", "SOLVER.WARMUP_ITERS", "20", "SEED"]
            and words[-2] == "OUTPUT_DIR"
        )  # in key order
        seeds.append(words[-3])
    assert Counter(seeds) == {"0": 7, "1": 4}


def test_dcl_plan_resolves_configs_in_the_checkout_it_runs_in(tmp_path):
    """In another checkout (a copy with its own configs), the commands name that checkout's
    detectron2 configs, as its Snakefile's rules do, not those of the installed package."""
    checkout = tmp_path / "clone"
    shutil.copytree(REPO / "configs", checkout / "configs")
    shutil.copy(REPO / "Snakefile", checkout / "Snakefile")
    (checkout / "workflow" / "rules").mkdir(parents=True)
    (checkout / "results").mkdir()
    shutil.copy(REPO / "results" / "published.yaml", checkout / "results")
    result = run_dcl("plan", "../configs/toy.yaml", "--commands", cwd=checkout / "results")
    assert result.returncode == 0, result.stderr
    config_files = {words[words.index("--config-file") + 1] for words in map(shlex.split, result.stdout.splitlines())}
    assert config_files and all(Path(f).is_relative_to(checkout / "configs") for f in config_files), config_files
    assert checkout_root(checkout / "results") == checkout
    assert checkout_root(tmp_path) == REPO


def test_dcl_plan_rejects_a_bad_config_without_traceback(tmp_path):
    config = read_config_file(TOY)
    config["experiments"][0]["sedds"] = [1]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_dcl("plan", tmp_path / "bad.yaml", "-o", tmp_path / "x.json", cwd=REPO)
    assert result.returncode == 1
    assert "dcl plan: error: invalid" in result.stderr
    assert "experiments[0] (toy_cityscapes_baseline): unknown key 'sedds' (did you mean 'seeds'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_every_ablation_point_trains_its_own_swept_value():
    """The paper plan's ablation commands read back value by value: the last override of the
    swept key (the one detectron2 keeps) is the point's value, also for LOSS_WEIGHT, which the
    base experiment sets itself (1.2); a point equal to the base's value is the base's own run."""
    config = yaml.safe_load(PAPER.read_text())
    plan = paper_plan()
    base_loss_weight = next(e for e in config["experiments"] if e["name"] == "cityscapes_imagenet_dcl")["dcl"]
    assert base_loss_weight == {"LOSS_WEIGHT": 1.2}  # the case a sweep could silently lose
    defaults = {"LOSS_WEIGHT": 1.2, "NUM_SAMPLES": 32, "TEMPERATURE": 0.07, "WITH_PROJ": True}
    checked = 0
    for sweep in config["ablations"]:
        key = f"MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.{sweep['parameter']}"
        for value in sweep["values"]:
            name = f"{sweep['base']}_{sweep['parameter'].lower()}_{'on' if value is True else 'off' if value is False else value}"
            for seed in (0, 1, 2):
                run = next(r for r in plan.runs if r.experiment == name and r.seed == seed)
                job = plan.run(run.folder, seed)
                arguments = plan.train_arguments(job)
                trained = [arguments[i + 1] for i, word in enumerate(arguments) if word == key]
                final = trained[-1] if trained else str(defaults[sweep["parameter"]])
                assert yaml.safe_load(final) == value, (name, seed, arguments)
                assert (run.folder == sweep["base"]) == (value == defaults[sweep["parameter"]]), name
                checked += 1
    assert checked == 16 * 3
