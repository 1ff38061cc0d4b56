"""A method of one's own in the same harness (docs/own-method.md): the `methods` table of the
workflow config, `dcl train --import`, the check before any job, the report's rows, and the
example (examples/dice_mask_head.py) against an obviously-correct Dice formula."""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcl.workflow.experiments import Plan, read_config_file
from dcl.io import InputError
from toy_training import TOY_WORKFLOW_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
OWN = REPO / "configs" / "toy_own_method.yaml"
EXAMPLE = "examples/dice_mask_head.py"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
for variable in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "DETECTRON2_DATASETS", "DCL_TOY_DATASETS", "DCL_WEIGHTS_DIR"):
    ENV.pop(variable, None)


def own_config() -> dict:
    return read_config_file(OWN)


def plan_of(config: dict) -> Plan:
    return Plan(config, "own.yaml", repo_root=REPO, working_dir=REPO)


# ----------------------------------------------------------------------------- the plan
def test_own_method_command_imports_its_module_and_sets_its_head():
    plan = plan_of(own_config())
    dice = plan.run("toy_coco_dice", 1)
    command = plan.train_command(dice)
    assert "dcl train --num-gpus 1 --import examples/dice_mask_head.py --config-file" in command
    assert "MODEL.ROI_MASK_HEAD.NAME DiceMaskRCNNConvUpsampleHead MODEL.ROI_MASK_HEAD.DICE_WEIGHT 1.0" in command
    assert command.endswith("SEED 1 OUTPUT_DIR work_dirs/toy_own_method/toy_coco_dice/seed1")
    # The built-in experiments' commands import nothing.
    for name in ("toy_coco_baseline", "toy_coco_dcl"):
        assert "--import" not in plan.train_command(plan.run(name, 0))
    records = {r["experiment"]: r for r in plan.document()["runs"]}
    assert records["toy_coco_dice"]["method"] == "dice"
    assert records["toy_coco_dice"]["method_label"] == "Dice head"
    assert records["toy_coco_dice"]["baseline"] == "toy_coco_baseline"
    assert "method_label" not in records["toy_coco_dcl"] and "baseline" not in records["toy_coco_baseline"]


def test_own_method_on_refinemask_keeps_the_detectors_roi_heads_unless_it_names_its_own():
    config = own_config()
    config["experiments"][2].update(model="refinemask", config="configs/toy_cityscapes_refinemask_R18_FPN.yaml")
    config["methods"]["dice"]["overrides"] = {"MODEL.ROI_MASK_HEAD.NAME": "MyHead"}
    overrides = dict(plan_of(config).run("toy_coco_dice", 0).overrides)
    assert overrides["MODEL.ROI_HEADS.NAME"] == "RefineMaskROIHeads"
    assert overrides["MODEL.ROI_MASK_HEAD.NAME"] == "MyHead"


def test_commands_of_the_presets_without_a_method_of_ones_own_have_no_import():
    for preset in ("toy", "paper"):
        plan = Plan(read_config_file(REPO / "configs" / f"{preset}.yaml"), repo_root=REPO, working_dir=REPO)
        assert not plan.method_checks()
        assert all("--import" not in plan.train_command(r) for r in plan.jobs.values())
        assert all("method_label" not in r for r in plan.document()["runs"])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["experiments"][2].update(method="dise"),
            "experiments[2] (toy_coco_dice): method 'dise' is neither built in nor declared in `methods`",
        ),
        (
            lambda c: c["experiments"][2].pop("baseline"),
            "experiments[2] (toy_coco_dice): method 'dice' needs `baseline`",
        ),
        (
            lambda c: c["experiments"][2].update(baseline="toy_coco_baseline2"),
            "experiments[2] (toy_coco_dice): baseline 'toy_coco_baseline2' is not one of the `experiments`",
        ),
        (
            lambda c: c["experiments"][0].update(baseline="toy_coco_dcl"),
            "experiments[0] (toy_coco_baseline): `baseline` is for a method of the `methods` table",
        ),
        (
            lambda c: c["methods"]["dice"].update(imports=["examples/missing_head.py"]),
            "methods.dice: import examples/missing_head.py does not exist",
        ),
        (
            lambda c: c["methods"]["dice"].update(imports=["not a module"]),
            "methods.dice: import 'not a module' is neither a module name",
        ),
        (
            lambda c: c["experiments"][2].update(overrides={"MODEL.ROI_MASK_HEAD.NAME": "X"}),
            "experiments[2] (toy_coco_dice): override MODEL.ROI_MASK_HEAD.NAME is set by the workflow",
        ),
        (
            lambda c: c["methods"]["dice"].update(overrides={"SEED": 3}),
            "methods.dice: override SEED is set by the workflow",
        ),
        (
            lambda c: c["experiments"][2].update(dcl={"LOSS_WEIGHT": 1.0}),
            "`dcl` settings need `method: dcl` (method is dice), or a method of `methods` with `dcl: true`",
        ),
        (
            lambda c: c["ablations"].append({"base": "toy_coco_dice", "parameter": "LOSS_WEIGHT", "values": [0.4]}),
            "base 'toy_coco_dice' has method dice",
        ),
    ],
)
def test_own_method_mistakes_are_one_line_each(change, message):
    config = own_config()
    change(config)
    with pytest.raises(InputError) as error:
        plan_of(config)
    assert message in str(error.value)


def test_methods_table_names_cannot_shadow_the_built_in_ones():
    config = own_config()
    config["methods"]["dcl"] = {"label": "mine"}
    with pytest.raises(InputError, match=r"methods: key 'dcl' is not allowed"):
        plan_of(config)


def test_dcl_on_top_of_an_own_method_takes_dcl_settings_and_ablations():
    config = own_config()
    config["methods"]["dice"]["dcl"] = True
    config["methods"]["dice"]["overrides"]["MODEL.ROI_HEADS.NAME"] = "ContrastRoIHeads"
    config["experiments"][2]["dcl"] = {"LOSS_WEIGHT": 0.8}
    config["ablations"] = [{"base": "toy_coco_dice", "parameter": "LOSS_WEIGHT", "values": [0.4, 0.8], "seeds": [0]}]
    plan = plan_of(config)
    point = plan.run("toy_coco_dice_loss_weight_0.4", 0)
    assert ("MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT", "0.4") in point.overrides
    assert "--import examples/dice_mask_head.py" in plan.train_command(point)
    record = next(r for r in plan.document()["runs"] if r["experiment"] == "toy_coco_dice_loss_weight_0.4")
    assert record["dcl_on_top"] is True and record["group"] == "ablation" and record["method_label"] == "Dice head"


# ----------------------------------------------------------------------------- dcl train --import
def test_train_import_option_is_repeatable_and_recorded():
    """`dcl train --import` may be given several times, also after the overrides; run.json records it."""
    from dcl.training.options import add_arguments, command_line, take_trailing_options

    parser = __import__("argparse").ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--import", EXAMPLE, "--config-file", "c.yaml", "SEED", "1", "--import", "x.y"])
    take_trailing_options(args)
    assert args.imports == [EXAMPLE, "x.y"] and args.opts == ["SEED", "1"]
    assert command_line(args)[:6] == ["dcl", "train", "--import", EXAMPLE, "--import", "x.y"]


def test_train_dry_run_builds_the_example_head_it_imports(tmp_path):
    """`dcl train --dry-run --import FILE`: the registration and the module's config keys exist in
    the process that builds the model; a name nobody registered is one line, before any build."""
    command = [
        sys.executable,
        "-m",
        "dcl",
        "train",
        "--dry-run",
        "--import",
        str(REPO / EXAMPLE),
        "--config-file",
        str(REPO / "configs" / "toy_coco_mask_rcnn_R18_FPN.yaml"),
        "MODEL.ROI_MASK_HEAD.DICE_WEIGHT",
        "0.5",
        "MODEL.ROI_MASK_HEAD.NAME",
    ]
    result = subprocess.run(
        [*command, "DiceMaskRCNNConvUpsampleHead"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["mask_head"] == "DiceMaskRCNNConvUpsampleHead"
    result = subprocess.run([*command, "DiceTypo"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "dcl train: error: MODEL.ROI_MASK_HEAD.NAME 'DiceTypo' is not registered in detectron2's ROI_MASK_HEAD_REGISTRY"
        )
    )


def test_the_check_names_the_experiment_and_what_is_wrong(tmp_path):
    """`dcl plan --check-methods`: a module that does not import, a head nobody registered."""
    for change, line in (
        (
            lambda c: c["methods"]["dice"].update(imports=[EXAMPLE, "no_such_package.heads"]),
            "  - experiments[2] (toy_coco_dice): method dice: --import no_such_package.heads: does not import: "
            "ModuleNotFoundError: No module named 'no_such_package'",
        ),
        (
            lambda c: c["methods"]["dice"]["overrides"].update({"MODEL.ROI_MASK_HEAD.NAME": "DiceHeadTypo"}),
            "  - experiments[2] (toy_coco_dice): method dice: MODEL.ROI_MASK_HEAD.NAME 'DiceHeadTypo' is not "
            "registered in detectron2's ROI_MASK_HEAD_REGISTRY",
        ),
    ):
        config = own_config()
        change(config)
        path = tmp_path / "own.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [sys.executable, "-m", "dcl", "plan", str(path), "--check-methods", "--repo-root", str(REPO)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env=ENV,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        problems = [text for text in result.stderr.splitlines() if text.startswith("  - ")]
        assert len(problems) == 1 and problems[0].startswith(line), result.stderr[-2000:]
    good = subprocess.run(
        [sys.executable, "-m", "dcl", "plan", str(OWN), "--check-methods"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=ENV,
    )
    assert good.returncode == 0, good.stderr[-2000:]


def test_workflow_stops_before_any_job_when_a_head_is_not_registered(tmp_path):
    config = own_config()
    config["preset"] = "broken_own"  # no configs/broken_own.yaml: this file is the whole config
    config["methods"]["dice"]["overrides"]["MODEL.ROI_MASK_HEAD.NAME"] = "DiceHeadTypo"
    path = tmp_path / "broken_own.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", REPO / "Snakefile", "--configfile", path, "--cores", "1"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"invalid {path.name}" in output
    assert (
        "  - experiments[2] (toy_coco_dice): method dice: MODEL.ROI_MASK_HEAD.NAME 'DiceHeadTypo' is not registered"
        in output
    )
    assert "Job stats" not in output and not (tmp_path / "datasets").exists() and not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- the example head
def _dice_by_hand(logits, targets, smooth=1.0):
    """1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s) per mask, averaged: plain Python."""
    losses = []
    for mask_logits, mask_targets in zip(logits, targets):
        p = [1 / (1 + math.exp(-v)) for row in mask_logits for v in row]
        g = [float(v) for row in mask_targets for v in row]
        overlap = sum(a * b for a, b in zip(p, g))
        losses.append(1 - (2 * overlap + smooth) / (sum(p) + sum(g) + smooth))
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def example():
    import dcl.compat  # noqa: F401  (before any detectron2 module)
    from dcl.training.methods import import_modules

    return import_modules([str(REPO / EXAMPLE)])[0]


def test_dice_loss_is_the_formula(example):
    import torch

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 5, generator=generator) * 3
    targets = (torch.rand(3, 5, 5, generator=generator) > 0.5).float()
    for smooth in (1.0, 1e-3):
        got = float(example.dice_loss(logits, targets, smooth))
        assert got == pytest.approx(_dice_by_hand(logits.tolist(), targets.tolist(), smooth), rel=1e-5)
    # A perfect, confident prediction costs ~0; the inverse ~1.
    assert float(example.dice_loss(targets * 40 - 20, targets)) < 1e-3
    assert float(example.dice_loss(20 - targets * 40, targets)) > 0.9
    assert float(example.dice_loss(logits[:0], targets[:0])) == 0.0


def test_the_example_head_adds_the_dice_term_to_mask_rcnns_loss(example):
    import torch
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, mask_rcnn_loss
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from dcl.training.config import load_config

    cfg = load_config(
        str(REPO / "configs" / "toy_coco_mask_rcnn_R18_FPN.yaml"), ["MODEL.ROI_MASK_HEAD.DICE_WEIGHT", "0.5"]
    )
    head = ROI_MASK_HEAD_REGISTRY.get("DiceMaskRCNNConvUpsampleHead")(cfg, ShapeSpec(channels=64, width=14, height=14))
    assert head.dice_weight == 0.5 and head.dice_smooth == 1.0
    torch.manual_seed(0)
    features = torch.randn(2, 64, 14, 14)
    instances = Instances((32, 32))
    instances.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 32.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:12, 2:12] = True
    masks[1, 10:30, 12:28] = True
    instances.gt_masks = BitMasks(masks)
    head.train()
    with EventStorage():  # mask_rcnn_loss logs its accuracy there
        losses = head(features, [instances])
        logits = head.layers(features)
        bce = mask_rcnn_loss(logits, [instances]).item()
    losses = {name: loss.item() for name, loss in losses.items()}
    assert set(losses) == {"loss_mask", "loss_mask_dice"}
    assert losses["loss_mask"] == pytest.approx(bce, rel=1e-5)
    class_logits = logits.detach()[torch.arange(2), instances.gt_classes]
    targets = instances.gt_masks.crop_and_resize(instances.proposal_boxes.tensor, logits.size(2)).float()
    expected = 0.5 * _dice_by_hand(class_logits.tolist(), targets.tolist())
    assert losses["loss_mask_dice"] == pytest.approx(expected, rel=1e-5)
    head.eval()
    instances.pred_classes = instances.gt_classes
    assert head(features, [instances])[0].pred_masks.shape == (2, 1, 28, 28)


# ----------------------------------------------------------------------------- the report
DICE_AP = [35.9, 36.2, 36.6]  # against cityscapes_imagenet_baseline's [35.0, 35.6, 36.1]


@pytest.fixture(scope="module")
def own_report(tmp_path_factory):
    """test_report's paper-like tree plus a method of one's own (3 seeds) on Cityscapes, ImageNet init."""
    from report_fixtures import PUBLISHED, build_paper_tree, coco_section, errors_record, gains, run_record, write_run

    from dcl.report import build_report

    root = tmp_path_factory.mktemp("own")
    runs = build_paper_tree(root)
    for seed, ap in enumerate(DICE_AP):
        record = {
            **run_record("cityscapes_imagenet_dice", seed, "cityscapes", "imagenet", "dice"),
            "method_label": "Dice head",
            "baseline": "cityscapes_imagenet_baseline",
        }
        runs.append(record)
        write_run(
            root,
            record,
            eval_json={"segm": coco_section(ap - 3), "cityscapes": {"AP": ap, "AP50": ap + 25}},
            errors=errors_record(gains("dice", seed, False), False, ap - 4),
            legacy=errors_record(gains("dice", seed, True), True, ap - 4),
        )
    (root / "experiments.json").write_text(json.dumps({"preset": "paper", "runs": runs}, indent=1))
    build_report(root, published_path=PUBLISHED)
    return root


def test_own_method_is_a_row_with_its_paired_difference(own_report):
    from report_fixtures import CS_AP, only, paired_by_hand, read_csv

    markdown = (own_report / "tables" / "main_results.md").read_text()
    cityscapes = markdown.split("### Cityscapes, ImageNet initialisation")[1].split("###")[0]
    assert "| Dice head (Mask R-CNN) | 3/3 |" in cityscapes  # beside RefineMask rows: says its detector
    assert "| Dice head (Mask R-CNN) − Mask R-CNN | 3 pairs |" in cityscapes
    expected = paired_by_hand(CS_AP["cityscapes_imagenet_baseline"], DICE_AP)
    rows = read_csv(own_report / "tables" / "main_results.csv")
    dice = only(rows, experiment="cityscapes_imagenet_dice")
    assert dice["method"] == "dice"
    got = [float(dice[k]) for k in ("delta_mean", "delta_ci_low", "delta_ci_high", "delta_p")]
    assert got == pytest.approx(expected, rel=1e-5) and dice["delta_pairs"] == "3"
    # Every metric of the family, against the declared baseline.
    compared = [
        r for r in read_csv(own_report / "tables" / "dcl_vs_baseline.csv") if r["dcl_experiment"].endswith("dice")
    ]
    assert {r["metric"] for r in compared} == {"cityscapes.AP", "cityscapes.AP50"}
    assert {r["baseline_experiment"] for r in compared} == {"cityscapes_imagenet_baseline"}
    assert "| Dice head − Baseline |" in (own_report / "tables" / "dcl_vs_baseline.md").read_text()


def test_own_method_in_the_error_table_and_figures(own_report):
    from pypdf import PdfReader
    from report_fixtures import gains, only, read_csv

    errors = (own_report / "tables" / "error_analysis.md").read_text()
    assert "| Dice head (Mask R-CNN), ImageNet | 3/3 |" in errors
    row = only(read_csv(own_report / "tables" / "error_analysis.csv"), experiment="cityscapes_imagenet_dice")
    assert float(row["FN_corrected_mean"]) == pytest.approx(sum(gains("dice", s, False)["FN"] for s in range(3)) / 3)
    text = "".join(page.extract_text() for page in PdfReader(own_report / "figures" / "error_breakdown.pdf").pages)
    assert "Dice head (Mask R-CNN), ImageNet init (n=3)" in text
    inventory = read_csv(own_report / "tables" / "run_inventory.csv")
    assert {r["status"] for r in inventory if r["experiment"] == "cityscapes_imagenet_dice"} == {"finished"}


def test_experiments_json_of_an_own_method_is_checked(tmp_path):
    from report_fixtures import run_record

    from dcl import runs as dcl_runs

    base = run_record("b", 0, "cityscapes", "imagenet", "baseline")
    for extra, words in (
        ({}, "a method of one's own needs 'method_label'"),
        ({"method_label": "Dice head", "baseline": "nope"}, "'baseline' 'nope' is not an experiment"),
    ):
        own = {**run_record("d", 0, "cityscapes", "imagenet", "dice"), **extra}
        (tmp_path / "experiments.json").write_text(json.dumps({"preset": "x", "runs": [base, own]}))
        with pytest.raises(InputError, match=re.escape(words)):
            dcl_runs.load_experiments(tmp_path / "experiments.json")
    bad = {**base, "method_label": "mine"}
    (tmp_path / "experiments.json").write_text(json.dumps({"preset": "x", "runs": [bad]}))
    with pytest.raises(InputError, match="are for methods other than baseline, dcl"):
        dcl_runs.load_experiments(tmp_path / "experiments.json")


# ----------------------------------------------------------------------------- end to end, on the toy data
@pytest.mark.e2e
def test_toy_own_method_dag_end_to_end(tmp_path):
    """configs/toy_own_method.yaml through `snakemake --profile profiles/local` (20 iterations): the
    Dice head trains, is evaluated and error-analysed, and stands in every table and figure beside
    the baseline and DCL with its paired difference against its declared baseline."""
    from pypdf import PdfReader
    from report_fixtures import only, read_csv

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            REPO / "Snakefile",
            "--profile",
            REPO / "profiles" / "local",
            "--cores",
            "2",
            "--config",
            "preset=toy_own_method",
            TOY_WORKFLOW_OVERRIDES,
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    results = tmp_path / "results" / "toy_own_method"
    for seed in (0, 1):
        folder = results / "runs" / "toy_coco_dice" / f"seed{seed}"
        run = json.loads((folder / "run.json").read_text())
        assert run["status"] == "finished" and run["iteration"] == 20
        assert run["command"][2:4] == ["--import", str(REPO / EXAMPLE)]
        assert "loss_mask_dice" in (folder / "metrics.json").read_text()  # the Dice head trained
        for name in ("errors.json", "errors_legacy.json", "errors_occ.json", "errors_legacy_occ.json"):
            assert json.loads((folder / name).read_text())["delta"], name  # `dcl errors` ran on its predictions
    tables = results / "tables"
    main = (tables / "main_results.md").read_text()
    assert "| Dice head | 2/2 |" in main and "| Dice head − baseline | 2 pairs |" in main
    assert "| DCL − baseline | 2 pairs |" in main
    dice = only(read_csv(tables / "main_results.csv"), experiment="toy_coco_dice")
    assert dice["delta_pairs"] == "2" and dice["delta_p"] != ""
    compared = [r for r in read_csv(tables / "dcl_vs_baseline.csv") if r["dcl_experiment"] == "toy_coco_dice"]
    assert compared and {r["baseline_experiment"] for r in compared} == {"toy_coco_baseline"}
    assert "| Dice head, scratch | 2/2 |" in (tables / "error_analysis.md").read_text()
    for figure in ("error_breakdown", "training_curves"):
        text = "".join(p.extract_text() for p in PdfReader(results / "figures" / f"{figure}.pdf").pages)
        assert "Dice head" in text, figure
    assert "6 runs expected: 6 finished" in (results / "README.md").read_text()
    status = subprocess.run(
        [sys.executable, "-m", "dcl", "status", str(results), "--no-slurm"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and "toy_coco_dice" in status.stdout, status.stdout + status.stderr


def test_dcl_on_top_of_an_own_method_sweeps_in_the_ablation_table_and_figure(tmp_path):
    """Ablation points of a method with `dcl: true`: its label in the figure, its declared baseline
    as the table's "no DCL" reference."""
    from pypdf import PdfReader
    from report_fixtures import PUBLISHED, coco_section, errors_record, gains, run_record, write_run

    from dcl.report import build_report

    own = {"method_label": "Dice head", "baseline": "b"}
    runs = []
    for name, method, extra, ablation, aps in (
        ("b", "baseline", {}, None, [35.0, 35.4]),
        ("d", "dice", {**own, "dcl_on_top": True}, None, [36.0, 36.2]),
        ("d_loss_weight_0.4", "dice", {**own, "dcl_on_top": True}, 0.4, [35.5, 35.9]),
    ):
        for seed, ap in enumerate(aps):
            record = {
                **run_record(
                    name,
                    seed,
                    "cityscapes",
                    "imagenet",
                    method,
                    group="main" if ablation is None else "ablation",
                    ablation=None
                    if ablation is None
                    else {
                        "parameter": "LOSS_WEIGHT",
                        "key": "MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.LOSS_WEIGHT",
                        "value": ablation,
                        "base": "d",
                    },
                ),
                **extra,
            }
            runs.append(record)
            write_run(
                tmp_path,
                record,
                eval_json={"segm": coco_section(ap - 3), "cityscapes": {"AP": ap, "AP50": ap + 25}},
                errors=errors_record(gains(name, seed, False), False),
                legacy=errors_record(gains(name, seed, True), True),
            )
    (tmp_path / "experiments.json").write_text(json.dumps({"preset": "x", "runs": runs}))
    build_report(tmp_path, published_path=PUBLISHED)
    ablations = (tmp_path / "tables" / "ablations.md").read_text()
    assert "around d" in ablations and "| 0.4 | 2/2 | 35.70 ± 0.28 |" in ablations
    assert "| no DCL (baseline) | 2/2 | 35.20 ± 0.28 |" in ablations
    text = "".join(p.extract_text() for p in PdfReader(tmp_path / "figures" / "ablations.pdf").pages)
    assert "Dice head (base: d)" in text
    assert "| Dice head, loss weight 0.4 | 2/2 |" in (tmp_path / "tables" / "error_analysis.md").read_text()
