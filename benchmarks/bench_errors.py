"""Benchmark ``dcl errors`` against a dense implementation of the original tool's algorithm.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_errors.py

Generates Cityscapes-sized synthetic data (default: 20 images of 1024x2048, ~106 GT, ~740
detections with every kind of error; ``synthetic_instances.py``), then runs, each in a fresh
process so times and peak memory are its own:

* ``dcl.evaluation.errors.analyze`` on one core (``-j 1``, pinned to one CPU) and with ``-j 2``;
* ``original_dense`` below, on one core: the original tool's algorithm as the issue describes it:
  every mask decoded to a full-resolution array, IoU by dense ``[D, G, H, W]`` broadcasts, the
  baseline AP re-evaluated for every error type, AP by pycocotools. (The broadcast is done in
  chunks of detections of at most 256 MB, so the benchmark does not take the shared machine's
  memory; the arithmetic is the same.)

and prints seconds per image, the speed-up, whether the numbers are identical, and peak memory;
then (``--memory``, on by default) the peak memory of ``analyze`` on much larger images and more
detections, to show it does not grow with them.

Both implementations run the original's unmatched-detection rule (``--legacy-unmatched``) by
default, since that is what the original tool computed; ``--mode default`` compares the fixed rule.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic_instances import pin_to_one_cpu, write_dataset  # the script's directory is sys.path[0]

TYPES = ["fFP", "bFP", "FN"]
CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------
# The original algorithm, densely
# --------------------------------------------------------------------------------------------


def _coco_ap(gt_path: str, results: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [None if v == -1 else 100 * float(v) for v in evaluator.stats]


def original_dense(gt_path: str, pred_path: str, types: list[str], legacy: bool) -> dict:
    """Fix every detection with dense full-resolution masks; AP by pycocotools. Returns
    {"baseline": stats, "fixed": {type: stats}} (stats: the 12 COCO numbers in percent)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
    predictions = json.load(open(pred_path))
    for p in predictions:
        p.pop("bbox", None)  # mask AP: areas from the masks
    fixed = {t: [dict(p) for p in predictions] for t in types}
    by_image: dict[int, list[int]] = {}
    for k, p in enumerate(predictions):
        by_image.setdefault(p["image_id"], []).append(k)
    for image_id in gt.imgs:
        anns = sorted((a for a in gt.imgToAnns[image_id] if not a["iscrowd"]), key=lambda a: a["category_id"])
        dets = sorted(by_image.get(image_id, []), key=lambda k: predictions[k]["category_id"])
        if not anns or not dets:
            continue
        gt_masks = np.stack([gt.annToMask(a).astype(bool) for a in anns])  # [G, H, W]
        det_masks = np.stack(
            [mask_utils.decode(predictions[k]["segmentation"]).astype(bool) for k in dets]
        )  # [D, H, W]
        num_gt = len(anns)
        chunk = max(1, CHUNK_BYTES // gt_masks[0].size // num_gt)
        inter = np.zeros((len(dets), num_gt))
        union = np.zeros((len(dets), num_gt))
        for start in range(0, len(dets), chunk):
            block = det_masks[start : start + chunk, None]  # [d, 1, H, W] against [1, G, H, W]
            inter[start : start + chunk] = np.count_nonzero(np.logical_and(block, gt_masks[None]), axis=(2, 3))
            union[start : start + chunk] = np.count_nonzero(np.logical_or(block, gt_masks[None]), axis=(2, 3))
        ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        same_class = (
            np.array([predictions[k]["category_id"] for k in dets])[:, None]
            == np.array([a["category_id"] for a in anns])[None, :]
        )
        ious[~same_class] = 0.0
        union_all = gt_masks.any(axis=0)
        # fFP keeps a detection's own GT pixels and the pixels of no other GT.
        keep = {g: gt_masks[g] | ~np.delete(gt_masks, g, axis=0).any(axis=0) for g in range(num_gt)}
        for row, k in enumerate(dets):
            best = num_gt - 1 - int(np.argmax(ious[row, ::-1]))
            own = best if ious[row, best] >= 0.1 else (num_gt - 1 if legacy else None)
            for name in types:
                mask = det_masks[row].copy()
                for kind in name.split("&"):
                    if kind == "bFP":
                        mask &= union_all
                    elif own is None:
                        continue
                    elif kind == "fFP":
                        mask &= keep[own]
                    else:
                        mask |= gt_masks[own]
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                fixed[name][k]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    result = {"fixed": {}}
    for name in types:
        result["baseline"] = _coco_ap(gt_path, [dict(p) for p in predictions])  # per type, as the original
        result["fixed"][name] = _coco_ap(gt_path, fixed[name])
    return result


# --------------------------------------------------------------------------------------------
# Child processes: one measured run each
# --------------------------------------------------------------------------------------------


def _child(variant: str, gt_path: str, pred_path: str, types: list[str], legacy: bool, workers: int) -> None:
    if workers == 1:
        pin_to_one_cpu()
    import pycocotools.coco  # noqa: F401  (imports are not what is measured)

    from dcl.data.coco import STAT_NAMES
    from dcl.evaluation.errors import analyze

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if variant == "dense":
        result = original_dense(gt_path, pred_path, types, legacy)
    else:
        out = analyze(gt_path, pred_path, types, legacy_unmatched=legacy, workers=workers)
        result = {
            "baseline": [out["baseline"][n] for n in STAT_NAMES],
            "fixed": {t: [out["fixed"][t][n] for n in STAT_NAMES] for t in types},
        }
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    # Per-process peak: this process's own high-water mark (VmHWM: ru_maxrss would include the
    # benchmark parent's memory from before the exec), and the largest -j worker's.
    peak_kb = max(_own_peak_kb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_kb / 1024, "result": result}))


def _own_peak_kb() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the -j workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(variant: str, gt_path: Path, pred_path: Path, types: list[str], legacy: bool, workers: int = 1) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        str(gt_path),
        str(pred_path),
        "--types",
        *types,
        "--workers",
        str(workers),
    ] + (["--legacy"] if legacy else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def _parallel_capacity(n: int = 10_000_000) -> float:
    """Speed-up of two processes over one on two equal pure-Python loops: the parallelism the
    (possibly shared) machine offers at the moment, to read the -j numbers against."""
    import multiprocessing

    start = time.perf_counter()
    _burn(n), _burn(n)
    one = time.perf_counter() - start
    with multiprocessing.get_context().Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_burn, [n, n])
        two = time.perf_counter() - start
    return one / two


def _max_difference(a: dict, b: dict) -> float:
    pairs = [(a["baseline"], b["baseline"])] + [(a["fixed"][t], b["fixed"][t]) for t in a["fixed"]]
    worst = 0.0
    for x, y in pairs:
        for u, v in zip(x, y):
            if (u is None) != (v is None):
                return float("inf")
            if u is not None:
                worst = max(worst, abs(u - v))
    return worst


def _write_dataset(directory: Path, name: str, **kwargs) -> tuple[Path, Path, dict]:
    gt_path, pred_path = directory / f"{name}_gt.json", directory / f"{name}_pred.json"
    gt, predictions = write_dataset(gt_path, pred_path, **kwargs)
    summary = {
        "images": len(gt["images"]),
        "gt": sum(not a["iscrowd"] for a in gt["annotations"]),
        "crowd": sum(a["iscrowd"] for a in gt["annotations"]),
        "detections": len(predictions),
        "max_dets_per_image": max(np.bincount([p["image_id"] for p in predictions])),
    }
    return gt_path, pred_path, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["legacy", "default"], default="legacy")
    parser.add_argument("--no-memory", action="store_true", help="skip the large-input memory run")
    parser.add_argument("--no-scaling", action="store_true", help="skip the -j scaling run (5x the images)")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "GT", "PRED"), help=argparse.SUPPRESS)
    parser.add_argument("--types", nargs="+", default=TYPES, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--legacy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.types, args.legacy, args.workers)
        return 0

    legacy = args.mode == "legacy"
    with tempfile.TemporaryDirectory(prefix="bench-errors-") as tmp:
        gt_path, pred_path, summary = _write_dataset(
            Path(tmp), "cityscapes_like", num_images=args.images, height=args.height, width=args.width, seed=args.seed
        )
        print(
            f"data: {summary['images']} images of {args.height}x{args.width}, {summary['gt']} GT "
            f"(+{summary['crowd']} crowd), {summary['detections']} detections "
            f"(at most {summary['max_dets_per_image']} per image); types {', '.join(TYPES)}; "
            f"unmatched detections: {'legacy rule' if legacy else 'fixed rule'}"
        )
        fast = _measure("fast", gt_path, pred_path, TYPES, legacy)
        fast2 = _measure("fast", gt_path, pred_path, TYPES, legacy, workers=2)
        dense = _measure("dense", gt_path, pred_path, TYPES, legacy)
        n = summary["images"]
        print(f"{'implementation':40s} {'seconds':>8s} {'s/image':>8s} {'CPU s':>8s} {'peak MB':>8s}")
        for label, run in (
            ("original algorithm, dense (1 core)", dense),
            ("dcl errors -j 1 (1 core)", fast),
            ("dcl errors -j 2", fast2),
        ):
            print(
                f"{label:40s} {run['seconds']:8.2f} {run['seconds'] / n:8.3f} {run['cpu_seconds']:8.2f} "
                f"{run['peak_mb']:8.0f}"
            )
        difference = max(
            _max_difference(fast["result"], dense["result"]), _max_difference(fast2["result"], dense["result"])
        )
        print(
            f"speed-up on one core: {dense['seconds'] / fast['seconds']:.1f}x "
            f"(target >= 10x; the issue's measurement of the original tool: 25.4 s -> "
            f"{25.4 / fast['seconds']:.1f}x)"
        )
        print(f"-j 2 vs -j 1 here: {fast['seconds'] / fast2['seconds']:.2f}x (too little work to share; see below)")
        print(
            f"numbers identical to the dense original: {'yes' if difference < 1e-9 else 'NO'} "
            f"(largest difference {difference:.2e} AP points)"
        )
        gains = {t: dense["result"]["fixed"][t][0] - dense["result"]["baseline"][0] for t in TYPES}
        print("AP gains: " + ", ".join(f"{t} {g:+.2f}" for t, g in gains.items()))

        if not args.no_scaling:
            gt_many, pred_many, many = _write_dataset(
                Path(tmp), "many", num_images=5 * args.images, height=args.height, width=args.width, seed=args.seed + 2
            )
            runs = {j: _measure("fast", gt_many, pred_many, TYPES, legacy, workers=j) for j in (1, 2)}
            print(
                f"scaling: {many['images']} images, {many['detections']} detections: -j 1 "
                f"{runs[1]['seconds']:.2f} s ({runs[1]['cpu_seconds']:.2f} CPU s), -j 2 {runs[2]['seconds']:.2f} s "
                f"({runs[2]['cpu_seconds']:.2f} CPU s): {runs[1]['seconds'] / runs[2]['seconds']:.2f}x"
            )
            print(
                f"  for comparison, what this machine gives two processes right now: "
                f"{_parallel_capacity():.2f}x on a pure-CPU loop ({os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f})"
            )

        if not args.no_memory:
            big = dict(
                num_images=3,
                height=4096,
                width=8192,
                seed=args.seed + 1,
                gt_per_image=(20, 21),
                dets_per_gt=(4, 5),
                false_positives=(20, 21),
                max_dets=100,
            )
            gt_big, pred_big, big_summary = _write_dataset(Path(tmp), "large", **big)
            large = _measure("fast", gt_big, pred_big, TYPES, legacy)
            print(
                f"memory: {big_summary['images']} images of 4096x8192, {big_summary['gt']} GT, "
                f"{big_summary['detections']} detections ({big_summary['max_dets_per_image']} per image): "
                f"dcl errors peak {large['peak_mb']:.0f} MB in {large['seconds']:.2f} s "
                f"(a dense [D, G, H, W] mask tensor for one image would be "
                f"{100 * 20 * 4096 * 8192 / 2**30:.0f} GB); limit 2048 MB: "
                f"{'ok' if large['peak_mb'] < 2048 else 'EXCEEDED'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
