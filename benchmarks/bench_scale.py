"""A scale rehearsal of the pipeline's CPU steps: inputs of the paper's real sizes, each step's
wall time and peak memory beside the resources the workflow declares for it.

    .venv/bin/python benchmarks/bench_scale.py [--fast] [--stages evaluate,errors] [--json FILE]

Synthesizes (``synthetic_instances.py``'s generator; deterministic) and measures, each step run as
the workflow runs it (a ``dcl ...`` subprocess with the workflow's options, from
``dcl.workflow.experiments.Plan``, on the paths ``Plan`` gives for a datasets root in the work directory):

* ``evaluate``: ``dcl evaluate`` of COCO-val-size predictions (5,000 images of 640x480, 100
  detections each);
* ``errors`` / ``errors-legacy``: ``dcl errors`` (fFP, bFP, FN; ``--legacy-unmatched``) of the
  same, with the workflow profile's worker count (at most this machine's CPUs, as Snakemake caps it);
* ``cityscapes-evaluate``: ``dcl evaluate --cityscapes-root`` (the official Cityscapes AP) of 100
  full-resolution detections per 1024x2048 image: at full size on a subset of the 500 val images
  (``--cityscapes-eval-images``, default 50), its time extrapolated linearly to 500 (said so);
* ``cityscapes-to-coco`` / ``cityscapes-to-coco-detectron``: ``dcl data cityscapes-to-coco`` (both
  styles) of 500 gtFine val images (instanceIds + labelIds PNGs of 1024x2048);
* ``report`` / ``status``: ``dcl report`` / ``dcl status`` on the paper's run tree
  (``configs/paper.yaml`` planned, every run folder filled with finished-run files);
* ``loader``: the training loader's private memory per worker (and the main process's) over one
  pass of a COCO-train-size dataset-dict list (118,287 images), with the serialized storage of
  ``dcl.training.sampler`` and with a plain list (the previous behaviour): before/after and the ratio, and
  the projected per-job loader memory against the COCO training job's ``mem_mb``.

Peak memory: the largest sum of PSS (proportional set size: shared pages counted once) over the
stage's process tree, and the largest peak RSS (VmHWM) of one of its processes, both polled every 0.2 s.
Declared resources are read from the workflow profile (``profiles/default/config.yaml``), the
rules (``workflow/rules/*.smk``: a local rule runs on the login node and declares none) and the
workflow config (``configs/paper.yaml``: training). ``--fast`` runs the same code on small inputs
(the test suite does). ``--workdir DIR`` keeps the synthesized inputs there and reuses them
(stage-by-stage runs at full size).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_status import run_json  # noqa: E402  (the script's directory is sys.path[0])
from synthetic_instances import make_dataset  # noqa: E402

from dcl import layout  # noqa: E402
from dcl.data.coco import STAT_NAMES  # noqa: E402
from dcl.workflow.experiments import Plan, load_workflow_config  # noqa: E402
from dcl.io import read_yaml  # noqa: E402

STAGES = (
    "evaluate",
    "errors",
    "errors-legacy",
    "cityscapes-evaluate",
    "cityscapes-to-coco",
    "cityscapes-to-coco-detectron",
    "report",
    "status",
    "loader",
)
PAPER_CONFIG = REPO / "configs" / "paper.yaml"
WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.yaml"
SLURM_PROFILE = REPO / "slurm" / "config.yaml"
RULES = REPO / "workflow" / "rules"
CITIES = ("frankfurt", "lindau", "munster")  # Cityscapes val's cities
POLL_S = 0.2


@dataclasses.dataclass(frozen=True)
class Sizes:
    coco_images: int = 5000  # COCO val2017
    coco_height: int = 480
    coco_width: int = 640
    cityscapes_images: int = 500  # Cityscapes val
    cityscapes_eval_images: int = 50  # the subset cityscapes-evaluate runs on (extrapolated to 500)
    cityscapes_height: int = 1024
    cityscapes_width: int = 2048
    loader_images: int = 118_287  # COCO train2017
    metrics_every: int = 20  # detectron2's logging period (metrics.json lines of the report tree)


FULL = Sizes()
FAST = Sizes(
    coco_images=40,
    cityscapes_images=6,
    cityscapes_eval_images=3,
    cityscapes_height=256,
    cityscapes_width=512,
    loader_images=3000,
    metrics_every=1000,
)
# Detections per image: COCO's maxDets (the models keep 100 per image).
MAX_DETS = 100


# ----------------------------------------------------------------------------- measuring
def _vm_hwm_kb(pid: int) -> int:
    """A process's own peak RSS (VmHWM; ru_maxrss of a child would include its parent's RSS at the
    fork, which exec keeps)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_memory_kb(root_pid: int) -> tuple[int, int]:
    """The PSS sum over a process tree and the largest VmHWM in it, kB."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total, largest = 0, 0
    for process in processes:
        try:
            total += process.memory_full_info().pss // 1024
        except psutil.Error:
            continue
        largest = max(largest, _vm_hwm_kb(process.pid))
    return total, largest


def measure(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``command``; its wall time, the peak PSS sum over its process tree and the largest peak
    RSS of one of its processes (both polled). Exits with its stderr when it fails."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        peak_kb, rss_kb = 0, 0
        while process.poll() is None:
            pss, hwm = _tree_memory_kb(process.pid)
            peak_kb, rss_kb = max(peak_kb, pss), max(rss_kb, hwm)
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
        if process.returncode != 0:
            err.seek(0)
            sys.exit(f"bench_scale: {shlex.join(command)} failed ({process.returncode}):\n{err.read()[-3000:]}")
        out.seek(0)
        return {"wall_s": wall, "peak_mb": peak_kb / 1024, "max_rss_mb": rss_kb / 1024, "stdout": out.read()}


def dcl_command(*words: str) -> list[str]:
    return [sys.executable, "-m", "dcl", *words]


# ----------------------------------------------------------------------------- declared resources
def _rule_block(name: str) -> str | None:
    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        match = re.search(rf"^rule {re.escape(name)}:\n((?:[ \t]+.*\n|\n)*)", text, re.M)
        if match:
            return match.group(1)
    return None


def declared_for_rule(rule: str) -> dict:
    """What the workflow declares for a rule's jobs: the workflow profile's set-resources and
    set-threads; a local rule none (it runs on the login node); else Slurm's default-resources."""
    profile = read_yaml(WORKFLOW_PROFILE, "workflow profile")
    resources = (profile.get("set-resources") or {}).get(rule)
    threads = (profile.get("set-threads") or {}).get(rule)
    if resources:
        return {
            "source": f"profiles/default set-resources {rule}",
            "mem_mb": resources.get("mem_mb"),
            "runtime_min": resources.get("runtime"),
            "cpus": resources.get("cpus_per_task", threads),
            "threads": threads,
        }
    block = _rule_block(rule)
    if block is None:
        return {"source": "undeclared (not a workflow rule)"}
    if re.search(r"^\s+localrule:\s*True", block, re.M):
        return {"source": f"undeclared (rule {rule} is a local rule: login node)"}
    if re.search(r"^\s+resources:", block, re.M):
        return {"source": f"rule {rule}'s resources (per run)"}
    defaults = read_yaml(SLURM_PROFILE, "slurm profile").get("default-resources") or {}
    return {
        "source": "slurm default-resources",
        "mem_mb": defaults.get("mem_mb"),
        "runtime_min": defaults.get("runtime"),
        "threads": threads,
    }


def workflow_threads(rule: str) -> tuple[int, int]:
    """The rule's threads per the workflow profile, and what Snakemake gives it here (capped at
    this machine's CPUs, as `--cores all` caps it)."""
    profile = read_yaml(WORKFLOW_PROFILE, "workflow profile")
    wanted = int((profile.get("set-threads") or {}).get(rule, 1))
    return wanted, max(1, min(wanted, os.cpu_count() or 1))


def plan_for(datasets_root: Path, working_dir: Path = REPO) -> Plan:
    config = load_workflow_config([PAPER_CONFIG], [f"datasets_root={json.dumps(str(datasets_root))}"])
    return Plan(config, source=PAPER_CONFIG.name, repo_root=REPO, working_dir=working_dir)


def paper_plan(working_dir: Path) -> Plan:
    """configs/paper.yaml as the workflow plans it from ``working_dir``."""
    return Plan(load_workflow_config([PAPER_CONFIG]), source=PAPER_CONFIG.name, repo_root=REPO, working_dir=working_dir)


def first_run(plan: Plan, dataset: str, kind: str = "train"):
    return next(r for r in plan.runs if r.dataset == dataset and r.kind == kind)


# ----------------------------------------------------------------------------- synthetic inputs
def _chunk(job: tuple) -> tuple[dict, list[dict]]:
    start, count, seed, kwargs = job
    gt, detections = make_dataset(num_images=count, seed=seed, **kwargs)
    offset, ann_offset = start, start * 10_000  # ids unique across chunks
    for image in gt["images"]:
        image["id"] += offset
    for annotation in gt["annotations"]:
        annotation["image_id"] += offset
        annotation["id"] += ann_offset
    for detection in detections:
        detection["image_id"] += offset
    return gt, detections


def synthesize(num_images: int, seed: int, chunk: int = 50, **kwargs) -> tuple[dict, list[dict]]:
    """``make_dataset`` over ``num_images`` in chunks of ``chunk`` images (seed ``seed`` + chunk
    index), on two processes; image ids 1..N, the first images the same whatever N."""
    jobs = [
        (start, min(chunk, num_images - start), seed * 100_000 + start, kwargs) for start in range(0, num_images, chunk)
    ]
    with get_context("fork").Pool(min(2, len(jobs))) as pool:
        parts = pool.map(_chunk, jobs)
    gt = {**parts[0][0], "images": [], "annotations": []}
    detections: list[dict] = []
    for part_gt, part_detections in parts:
        gt["images"] += part_gt["images"]
        gt["annotations"] += part_gt["annotations"]
        detections += part_detections
    return gt, detections


def _done(path: Path, sizes: dict) -> bool:
    marker = path / "inputs.json"
    return marker.is_file() and json.loads(marker.read_text()) == sizes


def _mark(path: Path, sizes: dict) -> None:
    (path / "inputs.json").write_text(json.dumps(sizes))


def coco_inputs(workdir: Path, sizes: Sizes, seed: int) -> tuple[Plan, Path, dict]:
    """COCO val GT where the plan's datasets root has it, and predictions; their counts."""
    root = workdir / "coco_val"
    plan = plan_for(root / "datasets")
    gt_path, predictions = Path(plan.gt("coco")), root / "predictions.json"
    wanted = {"images": sizes.coco_images, "height": sizes.coco_height, "width": sizes.coco_width, "seed": seed}
    wanted["detections_per_image"] = MAX_DETS
    if not _done(root, wanted):
        gt, detections = synthesize(
            sizes.coco_images,
            seed,
            height=sizes.coco_height,
            width=sizes.coco_width,
            gt_per_image=(3, 12),  # ~7.3 per image, as COCO val (36,781 on 5,000 images)
            dets_per_gt=(8, 20),
            false_positives=(MAX_DETS, MAX_DETS + 1),  # fill every image up to 100 detections
            max_dets=MAX_DETS,
        )
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        gt_path.write_text(json.dumps(gt))
        predictions.write_text(json.dumps(detections))
        _mark(root, {**wanted, "gt": len(gt["annotations"]), "detections": len(detections)})
    counts = json.loads((root / "inputs.json").read_text())
    return plan, predictions, counts


def _paint_cityscapes(job: tuple) -> None:
    """instanceIds and labelIds PNGs of one image from its GT annotations (in order: later ones
    occlude earlier ones), with the real Cityscapes label ids."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from dcl.data.cityscapes import CATEGORIES

    label_of = {c["id"]: c["cityscapes_label_id"] for c in CATEGORIES}
    gt_dir, stem, height, width, annotations = job
    ids = np.full((height, width), 11, dtype=np.uint16)  # building
    ids[int(0.45 * height) :] = 7  # road
    counters: dict[int, int] = {}
    for annotation in annotations:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        else:
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        mask = mask_utils.decode(rle).astype(bool)
        label = label_of[annotation["category_id"]]
        if annotation["iscrowd"]:
            ids[mask] = label  # a group region: no instance id
        else:
            ids[mask] = label * 1000 + counters.setdefault(label, 0)
            counters[label] += 1
    labels = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
    Image.fromarray(ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    Image.fromarray(labels).save(gt_dir / f"{stem}_gtFine_labelIds.png")


def cityscapes_inputs(workdir: Path, name: str, images: int, sizes: Sizes, seed: int, detections: bool):
    """A Cityscapes root (gtFine/val of ``images`` images) where the plan's datasets root has it,
    and, with ``detections``, predictions (100 per image, full resolution) on the image ids its COCO
    conversion gives (images sorted by path). Returns the plan, the predictions path and counts."""
    top = workdir / name
    plan = plan_for(top / "datasets")
    root = Path(plan.cityscapes_root("cityscapes"))
    predictions = top / "predictions.json"
    wanted = {"images": images, "height": sizes.cityscapes_height, "width": sizes.cityscapes_width, "seed": seed}
    wanted["detections"] = MAX_DETS if detections else 0
    if not _done(top, wanted):
        gt, dets = synthesize(
            images,
            seed,
            chunk=10,
            height=sizes.cityscapes_height,
            width=sizes.cityscapes_width,
            gt_per_image=(10, 30),  # ~20 instances per image
            dets_per_gt=(3, 8) if detections else (0, 1),
            false_positives=(MAX_DETS, MAX_DETS + 1) if detections else (0, 1),
            max_dets=MAX_DETS,
        )
        by_image: dict[int, list[dict]] = {}
        for annotation in gt["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        jobs = []
        per_city = -(-images // len(CITIES))
        for index, image in enumerate(gt["images"]):  # sorted by path = generation order
            city = CITIES[index // per_city]
            gt_dir = root / layout.cityscapes_gt("val") / city
            gt_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{city}_000000_{index:06d}"
            jobs.append((gt_dir, stem, image["height"], image["width"], by_image.get(image["id"], [])))
        with get_context("fork").Pool(2) as pool:
            pool.map(_paint_cityscapes, jobs, chunksize=4)
        if detections:
            predictions.write_text(json.dumps(dets))
            from dcl.data.cityscapes import cityscapes_to_coco  # the GT evaluate reads (not measured)

            Path(plan.gt("cityscapes")).parent.mkdir(parents=True, exist_ok=True)
            cityscapes_to_coco(root, "val", plan.gt("cityscapes"))
        _mark(top, {**wanted, "gt": len(gt["annotations"]), "detections": len(dets) if detections else 0})
    counts = json.loads((top / "inputs.json").read_text())
    return plan, predictions, counts


# ----------------------------------------------------------------------------- the paper run tree
def _max_iters(plan: Plan) -> dict[str, int]:
    """SOLVER.MAX_ITER of each run folder's detectron2 config (what its metrics.json spans)."""
    from dcl.training.config import load_config

    cache: dict[tuple, int] = {}
    result = {}
    for run_ in plan.runs:
        key = (run_.config_file, run_.overrides)
        if key not in cache:
            cfg = load_config(str(REPO / run_.config_file), [w for pair in run_.overrides for w in pair])
            cache[key] = int(cfg.SOLVER.MAX_ITER)
        result[run_.run_dir] = cache[key]
    return result


def _metrics(method: str, max_iter: int, every: int, eval_period: int) -> str:
    lines = []
    for iteration in range(every - 1, max_iter, every):
        progress = iteration / max_iter
        record = {
            "data_time": 0.004,
            "eta_seconds": 0.4 * (max_iter - iteration),
            "fast_rcnn/cls_accuracy": 0.9 + 0.05 * progress,
            "fast_rcnn/false_negative": 0.4 - 0.2 * progress,
            "fast_rcnn/fg_cls_accuracy": 0.6 + 0.2 * progress,
            "iteration": iteration,
            "loss_box_reg": 0.3 - 0.1 * progress,
            "loss_cls": 0.4 - 0.2 * progress,
            "loss_mask": 0.5 - 0.2 * progress,
            "loss_rpn_cls": 0.05 - 0.02 * progress,
            "loss_rpn_loc": 0.08 - 0.03 * progress,
            "lr": 0.02,
            "mask_rcnn/accuracy": 0.8 + 0.1 * progress,
            "rank_data_time": 0.004,
            "roi_head/num_bg_samples": 480.0,
            "roi_head/num_fg_samples": 32.0,
            "rpn/num_neg_anchors": 250.0,
            "rpn/num_pos_anchors": 6.0,
            "time": 0.4,
            "total_loss": 1.5 - 0.7 * progress,
        }
        if method == "dcl":
            record["loss_contrast"] = 0.3 - 0.1 * progress
        lines.append(json.dumps(record))
        if (iteration + 1) % eval_period == 0:
            lines.append(json.dumps({"iteration": iteration, "segm/AP": 30 * progress, "bbox/AP": 35 * progress}))
    return "\n".join(lines) + "\n"


def _stats(ap: float) -> dict:
    """The 12 COCO statistics around ``ap``."""
    offsets = (0.0, 22.0, 5.0, -16.0, 3.0, 14.0, -5.0, 8.0, 10.0, -2.0, 12.0, 20.0)
    return {name: round(ap + offset, 3) for name, offset in zip(STAT_NAMES, offsets)}


def _errors(legacy: bool, baseline: float, gains: dict[str, float]) -> dict:
    return {
        "gt": "gt.json",
        "predictions": "coco_instances_results.json",
        "predictions_gt": None,
        "iou_type": "segm",
        "legacy_unmatched": legacy,
        "types": list(gains),
        "baseline": _stats(baseline),
        "fixed": {t: _stats(baseline + g) for t, g in gains.items()},
        "delta": {t: _stats(g) for t, g in gains.items()},
    }


def paper_tree(root: Path, sizes: Sizes, seed: int) -> Plan:
    """``results/paper`` of configs/paper.yaml in ``root`` (``experiments.json`` as ``dcl plan``
    writes it), every run folder holding a finished run's files (``layout.run_files``)."""
    plan = paper_plan(root)
    occlusion = root / plan.occlusion_subset
    occlusion.parent.mkdir(parents=True, exist_ok=True)
    occlusion.write_text("{}")  # there: the COCO runs have their *_occ.json files
    results = root / plan.results
    results.mkdir(parents=True, exist_ok=True)
    (results / layout.EXPERIMENTS).write_text(json.dumps(plan.document(), indent=1))
    max_iters = _max_iters(plan)
    rng = np.random.default_rng(seed)
    for run_ in {r.run_dir: r for r in plan.runs}.values():
        folder = results / run_.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        ap = float(rng.uniform(34, 39))
        eval_json = {"gt": "gt.json", "predictions": "p.json", "segm": _stats(ap - 3), "bbox": _stats(ap)}
        if run_.metric.startswith("cityscapes"):
            eval_json["cityscapes"] = {"AP": ap, "AP50": ap + 25, "per_class": {"person": {"AP": ap, "AP50": ap + 25}}}
        gains = {"fFP": float(rng.uniform(1, 3)), "bFP": float(rng.uniform(3, 5)), "FN": float(rng.uniform(7, 10))}
        contents = {
            f"{layout.EVALUATION}.json": eval_json,
            f"{layout.CORRECTED_ERRORS}.json": _errors(False, ap - 4, gains),
            f"{layout.LEGACY_ERRORS}.json": _errors(True, ap - 4, {**gains, "FN": gains["FN"] + 5}),
        }
        for name in layout.run_files(run_.kind, plan.occlusion_gt(run_.dataset) is not None):
            stem, occ = layout.split_occlusion(name[: -len(".json")])
            if name == layout.RUN_RECORD:
                max_iter = max_iters[run_.run_dir]
                record = {
                    **run_json("finished", run_.seed, max_iter, 6 if run_.kind == "train" else 1),
                    "max_iter": max_iter,
                }
                if run_.kind == "released":
                    record["mode"] = "eval-only"
                (folder / name).write_text(json.dumps(record))
            elif name == layout.TRAINING_METRICS:
                max_iter = max_iters[run_.run_dir]
                text = _metrics(run_.method, max_iter, sizes.metrics_every, max(sizes.metrics_every, max_iter // 4))
                (folder / name).write_text(text)
            else:
                (folder / name).write_text(json.dumps(contents[f"{stem}.json"]))
    return plan


# ----------------------------------------------------------------------------- the loader
def coco_train_dicts(count: int, seed: int) -> list[dict]:
    """COCO-train-like detectron2 dataset dicts: Poisson(7.3) polygon annotations per image, 6-40
    vertices each (XYWH_ABS boxes: BoxMode 1)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(7.3, count)
    vertices = rng.integers(6, 41, int(counts.sum()))
    coords = (rng.random(int(vertices.sum()) * 2) * 600).round(2).tolist()
    dicts, k, offset = [], 0, 0
    for index in range(count):
        annotations = []
        for _ in range(int(counts[index])):
            n = 2 * int(vertices[k])
            polygon = coords[offset : offset + n]
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append(
                {
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "bbox_mode": 1,
                    "category_id": int(k % 80),
                    "segmentation": [polygon],
                    "iscrowd": 0,
                }
            )
            k, offset = k + 1, offset + n
        dicts.append(
            {
                "file_name": f"datasets/coco/train2017/{index:012d}.jpg",
                "height": 480,
                "width": 640,
                "image_id": index + 1,
                "annotations": annotations,
            }
        )
    return dicts


def map_dict(d: dict) -> dict:
    """What detectron2's DatasetMapper does to a dataset dict, without the image: a deep copy, the
    annotations walked (crowd dropped, boxes and polygons read), a small result."""
    d = copy.deepcopy(d)
    annotations = [a for a in d.pop("annotations") if a.get("iscrowd", 0) == 0]
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
    points = sum(len(p) for a in annotations for p in a["segmentation"]) // 2
    return {
        "image_id": d["image_id"],
        "instances": len(annotations),
        "points": points,
        "area": float(boxes[:, 2:].prod(1).sum()),
    }


def _vm_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def private_mb(pid: int) -> float:
    """Private_Clean + Private_Dirty of a process (/proc/<pid>/smaps_rollup), MB."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def loader_child(storage: str, images: int, batch_size: int, workers: int, seed: int) -> None:
    """One pass of the training loader over ``images`` dataset dicts held as ``storage``; prints
    JSON: private MB of the main process and of each worker at each quarter of the pass."""
    from dcl.training.sampler import ResumableTrainingSampler, release_freed_memory, seeded_loader, serialized_dicts

    start = time.perf_counter()
    dicts = coco_train_dicts(images, seed)
    built = time.perf_counter() - start
    if storage == "serialized":
        dataset = serialized_dicts(dicts)
        del dicts  # as build_train_loader: the serialized copy is the only one left
        release_freed_memory()
    else:
        dataset = dicts
    sampler = ResumableTrainingSampler(len(dataset), batch_size, seed=seed)
    loader = seeded_loader(dataset, map_dict, sampler, workers)
    batches = len(dataset) // batch_size
    quarters = {max(1, round(batches * q / 4)): q for q in (1, 2, 3, 4)}
    points, mapped = [], 0
    start = time.perf_counter()
    for number, batch in enumerate(loader, start=1):
        mapped += len(batch)
        if number in quarters:
            worker_pids = [w.pid for w in loader._iterator._workers]
            points.append(
                {
                    "quarter": quarters[number],
                    "batches": number,
                    # The main process's own pages: its RSS (forked workers make its pages
                    # shared, not private, until they copy them).
                    "main_mb": _vm_rss_mb(os.getpid()),
                    "main_private_mb": private_mb(os.getpid()),
                    "workers_mb": [private_mb(pid) for pid in worker_pids],
                }
            )
        if number == batches:
            break
    seconds = time.perf_counter() - start
    loader.close()
    print(
        json.dumps(
            {
                "storage": storage,
                "images": images,
                "batches": batches,
                "mapped": mapped,
                "build_s": built,
                "pass_s": seconds,
                "points": points,
            }
        )
    )


def training_loader_declared(plan: Plan) -> dict:
    """The COCO training job's resources and its detectron2 config's loader settings."""
    from dcl.training.config import load_config

    run_ = first_run(plan, "coco")
    cfg = load_config(str(REPO / run_.config_file), [w for pair in run_.overrides for w in pair])
    gpus = max(1, run_.resources.gpus)
    return {
        "experiment": run_.experiment,
        "gpus": gpus,
        "mem_mb": run_.resources.mem_mb,
        "default_mem_mb": plan.config["defaults"]["resources"]["mem_mb"],
        "num_workers": int(cfg.DATALOADER.NUM_WORKERS),
        "batch_per_gpu": int(cfg.SOLVER.IMS_PER_BATCH) // gpus,
    }


# ----------------------------------------------------------------------------- the stages
def ratio(measured: float | None, declared: float | None) -> float | None:
    return None if not measured or not declared else measured / declared


def row(stage: str, size: str, figures: dict, declared: dict, note: str = "") -> dict:
    runtime = declared.get("runtime_min")
    return {
        "stage": stage,
        "size": size,
        **{key: value for key, value in figures.items() if key != "stdout"},
        "declared": declared,
        "time_ratio": ratio(figures["wall_s"], runtime * 60 if runtime else None),
        "mem_ratio": ratio(figures["peak_mb"], declared.get("mem_mb")),
        "note": note,
    }


def run_stages(stages: list[str], sizes: Sizes, workdir: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    out = workdir / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    coco_stages = {"evaluate", "errors", "errors-legacy"} & set(stages)
    if coco_stages:
        plan, predictions, counts = coco_inputs(workdir, sizes, args.seed)
        run_ = first_run(plan, "coco")
        size = (
            f"{counts['images']} img {counts['width']}x{counts['height']}, {counts['gt']} GT, "
            f"{counts['detections']} det"
        )
        if "evaluate" in stages:
            wanted, threads = workflow_threads("evaluate")
            command = dcl_command(
                "evaluate",
                str(predictions),
                "-a",
                plan.gt("coco"),
                *shlex.split(plan.evaluate_options(run_)),
                "--threads",
                str(threads),
                "-o",
                str(out / "eval.json"),
            )
            rows.append(
                row("evaluate", size + f", --threads {threads}", measure(command, REPO), declared_for_rule("evaluate"))
            )
        for stage, legacy in (("errors", False), ("errors-legacy", True)):
            if stage in stages:
                wanted, workers = workflow_threads("errors")
                command = dcl_command(
                    "errors",
                    str(predictions),
                    "-a",
                    plan.errors_gt("coco", legacy),
                    *shlex.split(plan.errors_options(legacy)),
                    "-j",
                    str(workers),
                    "-o",
                    str(out / f"{stage}.json"),
                )
                note = f"-j {workers} (profile: {wanted}, capped at {os.cpu_count()} CPUs)" if workers != wanted else ""
                rows.append(
                    row(stage, size + f", -j {workers}", measure(command, REPO), declared_for_rule("errors"), note)
                )
    if "cityscapes-evaluate" in stages:
        subset = min(sizes.cityscapes_eval_images, sizes.cityscapes_images)
        plan, predictions, counts = cityscapes_inputs(workdir, "cityscapes_eval", subset, sizes, args.seed, True)
        run_ = first_run(plan, "cityscapes")
        _, threads = workflow_threads("evaluate")
        command = dcl_command(
            "evaluate",
            str(predictions),
            "-a",
            plan.gt("cityscapes"),
            *shlex.split(plan.evaluate_options(run_)),
            "--threads",
            str(threads),
            "-o",
            str(out / "eval_cityscapes.json"),
        )
        figures = measure(command, REPO)
        scale = sizes.cityscapes_images / subset
        note = ""
        if scale != 1:
            figures = {**figures, "measured_wall_s": figures["wall_s"], "wall_s": figures["wall_s"] * scale}
            note = (
                f"time measured on {subset} of {sizes.cityscapes_images} images ({figures['measured_wall_s']:.1f} s) "
                f"and extrapolated linearly x{scale:g}; memory of the subset"
            )
        size = (
            f"{sizes.cityscapes_images} img {counts['width']}x{counts['height']}, ~{counts['detections'] / subset:.0f} "
            f"det/img (subset {subset}: {counts['gt']} GT, {counts['detections']} det)"
        )
        rows.append(row("cityscapes-evaluate", size, figures, declared_for_rule("evaluate"), note))
    for stage, style in (("cityscapes-to-coco", "default"), ("cityscapes-to-coco-detectron", "detectron")):
        if stage in stages:
            plan, _, counts = cityscapes_inputs(
                workdir, "cityscapes_val", sizes.cityscapes_images, sizes, args.seed, False
            )
            output = Path(plan.errors_gt("cityscapes", legacy=True) if style == "detectron" else plan.gt("cityscapes"))
            root = output.parent.parent  # as the rule: <cityscapes folder>/annotations/<file>
            command = dcl_command(
                "data", "cityscapes-to-coco", str(root), "--split", "val", "-o", str(out / output.name)
            )
            if style == "detectron":
                command[-2:-2] = ["--style", "detectron"]
            rule = "cityscapes_to_coco" + ("_detectron" if style == "detectron" else "")
            size = f"{counts['images']} gtFine img {counts['width']}x{counts['height']}, {counts['gt']} instances"
            rows.append(row(stage, size, measure(command, REPO), declared_for_rule(rule)))
    if {"report", "status"} & set(stages):
        tree = workdir / "paper_tree"
        marker = {"metrics_every": sizes.metrics_every, "seed": args.seed}
        if not _done(tree, marker):
            tree.mkdir(parents=True, exist_ok=True)
            plan = paper_tree(tree, sizes, args.seed)
            _mark(tree, marker)
        else:
            plan = paper_plan(tree)
        results = plan.results
        runs = len(plan.document()["runs"])
        size = f"{runs} runs of configs/paper.yaml, {len({r.run_dir for r in plan.runs})} folders"
        if "report" in stages:
            words = [results, "--experiments", f"{results}/{layout.EXPERIMENTS}"]
            words += ["--published", plan.published] if plan.published else []
            rows.append(row("report", size, measure(dcl_command("report", *words), tree), declared_for_rule("report")))
        if "status" in stages:
            command = dcl_command("status", results, "--no-slurm")
            rows.append(row("status", size, measure(command, tree), declared_for_rule("status")))
    if "loader" in stages:
        rows.append(loader_stage(sizes, args))
    return rows


def loader_stage(sizes: Sizes, args: argparse.Namespace) -> dict:
    plan = plan_for(REPO / "datasets")
    declared = training_loader_declared(plan)
    results = {}
    for storage in ("list", "serialized"):
        command = [
            sys.executable,
            __file__,
            "--loader-child",
            storage,
            "--loader-images",
            str(sizes.loader_images),
            "--batch-size",
            str(declared["batch_per_gpu"]),
            "--loader-workers",
            str(args.loader_workers),
            "--seed",
            str(args.seed),
        ]
        figures = measure(command, REPO, {"OMP_NUM_THREADS": "1"})
        results[storage] = {**json.loads(figures.pop("stdout").strip().splitlines()[-1]), **figures}
    for figures in results.values():
        last = figures["points"][-1]
        figures["main_mb"] = last["main_mb"]
        figures["worker_mb"] = max(max(p["workers_mb"]) for p in figures["points"])
        figures["job_mb"] = declared["gpus"] * (figures["main_mb"] + declared["num_workers"] * figures["worker_mb"])
    after = results["serialized"]
    figures = {"wall_s": after["wall_s"], "peak_mb": after["job_mb"], "max_rss_mb": after["max_rss_mb"]}
    declared_job = {"source": f"configs/paper.yaml {declared['experiment']} resources", "mem_mb": declared["mem_mb"]}
    size = (
        f"{sizes.loader_images} dicts, batch {declared['batch_per_gpu']}/GPU, {args.loader_workers} workers measured; "
        f"job: {declared['gpus']} GPUs x (main + {declared['num_workers']} workers)"
    )
    note = (
        "peak MB: the projected per-job loader memory (serialized storage; private MB, below); wall s and max RSS: "
        "the measured process (one pass, with building the dicts)"
    )
    result = row("loader", size, figures, declared_job, note)
    result["loader"] = {"declared": declared, **results}
    return result


# ----------------------------------------------------------------------------- printing
def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(
        f"{'stage':30s} {'wall s':>8s} {'peak MB':>9s} {'max RSS MB':>10s}  {'declared':28s} "
        f"{'time ratio':>10s} {'mem ratio':>9s}"
    )
    for r in rows:
        d = r["declared"]
        parts = [
            f"{d[key]} {unit}"
            for key, unit in (("runtime_min", "min"), ("mem_mb", "MB"), ("cpus", "CPUs"))
            if d.get(key)
        ]
        declared = ", ".join(parts) or "undeclared"
        print(
            f"{r['stage']:30s} {r['wall_s']:8.1f} {r['peak_mb']:9.0f} {_fmt(r['max_rss_mb'], '10.0f'):>10s}  "
            f"{declared:28s} {_fmt(r['time_ratio'], '10.4f'):>10s} {_fmt(r['mem_ratio'], '9.3f'):>9s}"
        )
    print("\nsizes and sources:")
    for r in rows:
        print(
            f"  {r['stage']}: {r['size']}; declared: {r['declared']['source']}"
            + (f"; {r['note']}" if r["note"] else "")
        )
    for r in rows:
        if "loader" in r:
            print_loader(r["loader"])


def print_loader(loader: dict) -> None:
    declared = loader["declared"]
    before, after = loader["list"], loader["serialized"]
    print(
        f"\nloader: MB over one pass (main: RSS; workers: private) ({before['batches']} batches of {declared['batch_per_gpu']}), list -> serialized"
    )
    for storage in ("list", "serialized"):
        figures = loader[storage]
        for point in figures["points"]:
            workers = ", ".join(f"{mb:.0f}" for mb in point["workers_mb"])
            print(f"  {storage:10s} {point['quarter']}/4 of the pass: main {point['main_mb']:7.0f}  workers {workers}")
    print(
        f"  main process: {before['main_mb']:.0f} -> {after['main_mb']:.0f} MB (ratio {after['main_mb'] / before['main_mb']:.2f}; "
        f"target <= 0.6)"
    )
    print(
        f"  each worker (largest): {before['worker_mb']:.0f} -> {after['worker_mb']:.0f} MB "
        f"(ratio {after['worker_mb'] / before['worker_mb']:.3f}; target <= 50 MB)"
    )
    print(
        f"  projected loader memory of the {declared['experiment']} job ({declared['gpus']} GPUs x (main + "
        f"{declared['num_workers']} workers)): {before['job_mb']:.0f} -> {after['job_mb']:.0f} MB of its "
        f"mem_mb {declared['mem_mb']} ({before['job_mb'] / declared['mem_mb']:.2f} -> "
        f"{after['job_mb'] / declared['mem_mb']:.2f}; defaults.resources mem_mb {declared['default_mem_mb']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    parser.add_argument("--fast", action="store_true", help="small inputs, same code (the test suite's variant)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--workdir", type=Path, help="keep the synthesized inputs here and reuse them")
    parser.add_argument("--cityscapes-eval-images", type=int, help="cityscapes-evaluate's subset (default 50)")
    parser.add_argument("--loader-workers", type=int, default=2, help="loader workers measured (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loader-child", choices=("list", "serialized"), help=argparse.SUPPRESS)
    parser.add_argument("--loader-images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader_child:
        loader_child(args.loader_child, args.loader_images, args.batch_size, args.loader_workers, args.seed)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    sizes = FAST if args.fast else FULL
    if args.cityscapes_eval_images:
        sizes = dataclasses.replace(sizes, cityscapes_eval_images=args.cityscapes_eval_images)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = run_stages(stages, sizes, workdir.resolve(), args)
    print(
        f"bench_scale ({'fast' if args.fast else 'full size'}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; total {time.perf_counter() - started:.0f} s with the synthesis):"
    )
    print_table(rows)
    if args.json:
        args.json.write_text(
            json.dumps({"fast": args.fast, "sizes": dataclasses.asdict(sizes), "stages": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
