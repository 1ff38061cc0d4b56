"""Benchmark ``dcl data toy`` at its default size against its target ("a few seconds").

    .venv/bin/python benchmarks/bench_toydata.py [--repeat 3] [--target 10]

Generates the default toy datasets (64 train + 16 val images, COCO 128x128 and Cityscapes
128x256, including the Cityscapes -> COCO conversion when ``dcl.data.cityscapes`` is present) into a
temporary directory, ``--repeat`` times, and prints the best wall time and the process's CPU time
(what the wall time would be on an idle core; the machines this runs on are often shared), the
time per image, and the ratio of the target to the measured wall time (> 1: faster than the target).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from dcl.data.toydata import generate_toy_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", type=float, default=10.0, help="target seconds (default 10)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    times, cpu_times = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            start, cpu_start = time.perf_counter(), time.process_time()
            marker = generate_toy_datasets(out)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    images = sum(split["images"] for dataset in marker["counts"].values() for split in dataset.values())
    best = min(times)
    print(
        f"dcl data toy (defaults): {images} images in {best:.2f} s wall, {min(cpu_times):.2f} s CPU "
        f"(best of {args.repeat}; {1000 * best / images:.1f} ms/image)"
    )
    print(f"target {args.target:.0f} s / measured {best:.2f} s = {args.target / best:.1f}x")


if __name__ == "__main__":
    main()
