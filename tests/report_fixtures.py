"""The fabricated result trees of the report tests (tests/report/test_report.py), with known
numbers; also used by the status, tracking and own-method tests."""

from __future__ import annotations
import csv
import hashlib
import json
import math
import statistics
from pathlib import Path
from scipy import stats as scipy_stats

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published.yaml"
CAPTIONS = REPO / "workflow" / "report"
TABLES = ("main_results", "dcl_vs_baseline", "error_analysis", "ablations", "reproduction", "run_inventory")
FIGURES = ("error_breakdown", "ablations", "training_curves", "reproduced_vs_published")
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- independent statistics
def mean_std(values):
    return statistics.mean(values), statistics.stdev(values)


def paired_by_hand(baseline, dcl):
    """Mean paired difference, 95% t CI and two-sided p from the textbook formulas."""
    d = [b - a for a, b in zip(baseline, dcl)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    t = mean / se
    half = scipy_stats.t.ppf(0.975, n - 1) * se
    return mean, mean - half, mean + half, 2 * scipy_stats.t.sf(abs(t), n - 1)


# ----------------------------------------------------------------------------- tree fabrication
def run_record(experiment, seed, dataset, init, method, group="main", kind="train", ablation=None, model=None):
    return {
        **({"model": model} if model else {}),
        # As configs/paper.yaml names its COCO models (the published entries' "R50-FPN 1x").
        **({"schedule": "1x"} if dataset == "coco" else {}),
        "experiment": experiment,
        "seed": seed,
        "kind": kind,
        "dataset": dataset,
        "init": init,
        "method": method,
        "group": group,
        "ablation": ablation,
        "metric": "cityscapes.AP" if "cityscapes" in dataset else "segm.AP",
        "run_dir": f"runs/{experiment}/seed{seed}",
    }


def coco_section(ap):
    return {stat: ap + offset for stat, offset in zip(COCO_STATS, (0.0, 20.0, 5.0, -15.0, 2.0, 12.0))}


def errors_record(gains, legacy, baseline_ap=30.0):
    return {
        "gt": "gt.json",
        "predictions": "p.json",
        "iou_type": "segm",
        "legacy_unmatched": legacy,
        "types": list(gains),
        "baseline": {"AP": baseline_ap},
        "fixed": {t: {"AP": baseline_ap + g} for t, g in gains.items()},
        "delta": {t: {"AP": g} for t, g in gains.items()},
    }


def finished_run_json(seed, **extra):
    info = {
        "status": "finished",
        "exit_code": 0,
        "signal": None,
        "mode": "train",
        "seed": seed,
        "iteration": 100,
        "max_iter": 100,
        "wall_time_s": 5400.0,
        "gpus": {"count": 4, "type": "NVIDIA A100"},
    }
    info.update(extra)
    return info


def metrics_lines(method, seed):
    lines = []
    for it in (19, 39, 59, 79, 99):
        record = {
            "iteration": it,
            "total_loss": 2.0 / (it + 1) + seed * 0.01,
            "loss_mask": 0.5 / (it + 1),
            "lr": 0.01 * min(1.0, (it + 1) / 40),
        }
        if method == "dcl":
            record["loss_contrast"] = 1.0 / (it + 1)
        lines.append(json.dumps(record))
    lines.append(json.dumps({"iteration": 99, "segm/AP": 30.0}))  # an evaluation line: no training scalars
    return "\n".join(lines) + "\n"


def write_run(root, record, *, eval_json=None, errors=None, legacy=None, run_json="default", metrics="default"):
    folder = root / record["run_dir"]
    folder.mkdir(parents=True, exist_ok=True)
    if run_json == "default":
        run_json = finished_run_json(record["seed"]) if record["kind"] == "train" else None
    if metrics == "default":
        metrics = metrics_lines(record["method"], record["seed"]) if record["kind"] == "train" else None
    for name, content in (
        ("eval.json", eval_json),
        ("errors.json", errors),
        ("errors_legacy.json", legacy),
        ("run.json", run_json),
    ):
        if content is not None:
            (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics)


# Headline APs per experiment and seed (None: that seed has no folder at all).
CS_AP = {
    "cityscapes_imagenet_baseline": [35.0, 35.6, 36.1],
    "cityscapes_imagenet_dcl": [36.4, 37.3, 36.9],
    "cityscapes_coco_baseline": [36.0, 36.4, None],
    "cityscapes_coco_dcl": [37.5, 38.1, 37.7],
}
CS_AP50 = {
    "cityscapes_imagenet_baseline": [60.2, 61.0, 61.5],
    "cityscapes_imagenet_dcl": [62.0, 62.4, 61.8],
    "cityscapes_coco_baseline": [61.0, 61.9, None],
    "cityscapes_coco_dcl": [63.0, 63.1, 62.2],
}
COCO_AP = {"coco_imagenet_baseline": [35.1, 35.5], "coco_imagenet_dcl": [35.9, "corrupt"]}
COCO_BOX_AP = [38.4, 38.9]
# RefineMask (model: refinemask): DCL near 39.3 (reproduced), baseline well below 37.6.
REFINEMASK_AP = {
    "cityscapes_imagenet_refinemask_baseline": [36.1, 36.3, 35.9],
    "cityscapes_imagenet_refinemask_dcl": [39.0, 39.6, 39.2],
}
RELEASED_AP = 37.14
ABLATIONS = {  # experiment -> (parameter, value, APs over seeds)
    "ablation_loss_weight_2.0": ("LOSS_WEIGHT", 2.0, [36.0, 36.6]),
    "ablation_loss_weight_0.4": ("LOSS_WEIGHT", 0.4, [35.2, 35.9]),
    "ablation_with_proj_off": ("WITH_PROJ", False, [36.1, 36.3]),
}
# AP gains per experiment, seed -> {type: gain}; legacy inflates FN by a known amount per seed.
TYPES = ("FN", "fFP", "bFP", "fFP&bFP")  # deliberately not in display order


def gains(experiment, seed, legacy):
    base = {"fFP": 2.0 + 0.1 * seed, "bFP": 4.0 - 0.2 * seed, "FN": 9.0 + 0.3 * seed, "fFP&bFP": 6.5 + 0.05 * seed}
    if "dcl" in experiment:
        base["FN"] -= 2.0 + 0.1 * seed
    if legacy:
        base["FN"] += 5.0 + 0.4 * seed
    return {t: base[t] for t in TYPES}


def build_paper_tree(root: Path) -> list[dict]:
    runs = []
    for experiment, values in CS_AP.items():
        _, init, method = experiment.split("_")
        for seed, ap in enumerate(values):
            record = run_record(experiment, seed, "cityscapes", init, method)
            runs.append(record)
            if ap is None:
                continue
            write_run(
                root,
                record,
                eval_json={"segm": coco_section(ap - 3), "cityscapes": {"AP": ap, "AP50": CS_AP50[experiment][seed]}},
                errors=errors_record(gains(experiment, seed, False), False, ap - 4),
                legacy=errors_record(gains(experiment, seed, True), True, ap - 4),
            )
    for experiment, values in COCO_AP.items():
        method = experiment.rsplit("_", 1)[1]
        for seed, ap in enumerate(values):
            record = run_record(experiment, seed, "coco", "imagenet", method)
            runs.append(record)
            if ap == "corrupt":
                write_run(
                    root,
                    record,
                    eval_json='{"segm": {"AP": 35.',
                    errors=errors_record(gains(experiment, seed, False), False),
                    legacy=errors_record(gains(experiment, seed, True), True),
                )
                continue
            eval_json = {"segm": coco_section(ap)}
            if method == "baseline":
                eval_json["bbox"] = coco_section(COCO_BOX_AP[seed])
            write_run(
                root,
                record,
                eval_json=eval_json,
                errors=errors_record(gains(experiment, seed, False), False),
                legacy=errors_record(gains(experiment, seed, True), True),
            )
    record = run_record(
        "released_cityscapes_imagenet_dcl", 0, "cityscapes", "imagenet", "dcl", group="released", kind="released"
    )
    runs.append(record)
    write_run(
        root,
        record,
        eval_json={"cityscapes": {"AP": RELEASED_AP, "AP50": 62.0}},
        errors=errors_record(gains("released_dcl", 0, False), False),
        legacy=errors_record(gains("released_dcl", 0, True), True),
    )
    for experiment, (parameter, value, values) in ABLATIONS.items():
        ablation = {
            "parameter": parameter,
            "key": f"MODEL.ROI_MASK_HEAD.CONTRAST_LOSS.{parameter}",
            "value": value,
            "base": "cityscapes_imagenet_dcl",
        }
        for seed, ap in enumerate(values):
            record = run_record(experiment, seed, "cityscapes", "imagenet", "dcl", group="ablation", ablation=ablation)
            runs.append(record)
            write_run(
                root,
                record,
                eval_json={"cityscapes": {"AP": ap, "AP50": ap + 25}},
                errors=errors_record(gains(experiment, seed, False), False),
                legacy=errors_record(gains(experiment, seed, True), True),
            )
    for experiment, values in REFINEMASK_AP.items():
        method = experiment.rsplit("_", 1)[1]
        for seed, ap in enumerate(values):
            record = run_record(experiment, seed, "cityscapes", "imagenet", method, model="refinemask")
            runs.append(record)
            # COCO-style AP 1.5 above: RefineMask's own baseline is published as that (37.6).
            write_run(
                root,
                record,
                eval_json={"segm": coco_section(ap + 1.5), "cityscapes": {"AP": ap, "AP50": ap + 26}},
                errors=errors_record(gains(experiment, seed, False), False),
                legacy=errors_record(gains(experiment, seed, True), True),
            )
    (root / "experiments.json").write_text(json.dumps({"preset": "paper", "runs": runs}, indent=1))
    return runs


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def only(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted([*root.glob("tables/*"), *root.glob("figures/*"), root / "README.md"])
    }
