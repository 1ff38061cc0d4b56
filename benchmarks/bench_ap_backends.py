"""Benchmark the two COCO AP backends of ``dcl evaluate`` on the same files.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ap_backends.py [--gt GT.json --pred PRED.json]

Without files it evaluates the synthetic Cityscapes-sized data of bench_errors.py (same generator,
same seed: 20 images of 1024x2048, ~740 detections). Each backend loads fresh JSON (as
``dcl evaluate`` does), then mask and box AP are timed (best of ``--repeat``, one thread, pinned to
one CPU); prints seconds, the speed ratio and the largest difference between the two backends'
12 statistics.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dcl.data.coco import STAT_NAMES, load_ground_truth, load_predictions
from dcl.evaluation.evaluate import BACKENDS, CocoEvaluator
from synthetic_instances import pin_to_one_cpu, write_dataset  # the script's directory is sys.path[0]


def _time(gt_path: Path, pred_path: Path, backend: str, iou_type: str, repeat: int) -> tuple[float, float, dict]:
    """Best seconds of loading + validating, of evaluating (GT index + AP), and the statistics."""
    best_load, best_eval, stats = float("inf"), float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        gt = load_ground_truth(gt_path)  # fresh JSON per backend and run
        records = load_predictions(pred_path, gt, need_bbox=iou_type == "bbox")
        loaded = time.perf_counter()
        stats = CocoEvaluator(gt, iou_type, backend)(records)
        best_load, best_eval = min(best_load, loaded - start), min(best_eval, time.perf_counter() - loaded)
    return best_load, best_eval, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", type=Path)
    parser.add_argument("--pred", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pin_to_one_cpu()
    with tempfile.TemporaryDirectory(prefix="bench-ap-") as tmp:
        if args.gt is None or args.pred is None:
            args.gt, args.pred = Path(tmp) / "gt.json", Path(tmp) / "pred.json"
            write_dataset(args.gt, args.pred)
        print(
            f"files: {args.gt} ({args.gt.stat().st_size / 1e6:.1f} MB), {args.pred} "
            f"({args.pred.stat().st_size / 1e6:.1f} MB); best of {args.repeat}, seconds"
        )
        print(
            f"{'IoU type':8s} {'load+validate':>14s} "
            + " ".join(f"{b:>17s}" for b in BACKENDS)
            + f" {'ratio':>7s} {'max |diff|':>11s}"
        )
        for iou_type in ("segm", "bbox"):
            runs = {backend: _time(args.gt, args.pred, backend, iou_type, args.repeat) for backend in BACKENDS}
            (load_a, fast_s, fast), (load_b, ref_s, ref) = runs["faster-coco-eval"], runs["pycocotools"]
            difference = max((abs(fast[n] - ref[n]) for n in STAT_NAMES if ref[n] is not None), default=0.0)
            same_nulls = all((fast[n] is None) == (ref[n] is None) for n in STAT_NAMES)
            print(
                f"{iou_type:8s} {min(load_a, load_b):14.3f} {fast_s:17.3f} {ref_s:17.3f} {ref_s / fast_s:6.2f}x "
                f"{difference:11.1e}" + ("" if same_nulls else "  (null statistics differ!)")
            )
        print(
            "backend columns: GT index + evaluate + accumulate + summarize; ratio = pycocotools / "
            "faster-coco-eval; max |diff| over the 12 statistics, in AP points"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
