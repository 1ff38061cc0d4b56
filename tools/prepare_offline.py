#!/usr/bin/env python
"""Put every wheel the GPU device check needs, except PyTorch, and the toy data its tests train on
into ``wheelhouse/`` (ignored by git, travels with the working tree), for a bare machine with
Python 3.12 and PyTorch but no internet (docs/gpu.md):

    .venv/bin/python tools/prepare_offline.py   # here, with internet (after `make install`)
    bash tools/device_check.sh                  # there: a venv from wheelhouse/, CUDA tests, benchmark

Our pure-Python detectron2 wheel is built by tools/install_detectron2.py --wheel-dir; the rest
are binary wheels for CPython 3.12 on manylinux x86_64 from PyPI, pinned by constraints.txt where
it pins them, with their dependencies except those the target has (torch, torchvision, numpy).
Fails if the folder grows past 60 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / "wheelhouse"
LIMIT_MB = 60
# The non-stdlib modules that `benchmarks/bench_gpu.py` and the CUDA tests (a toy `dcl train`
# included) load besides torch/torchvision/numpy, found by running them in a bare venv: detectron2
# v0.6's imports, cityscapesscripts (its label table), TensorBoard for the training's event
# writer; pytest for `pytest -m gpu`. omegaconf 2.3, as `make install` has it (its parser
# runtime: antlr 4.9). Not scipy and opencv (~90 MB together): only `dcl data toy` needs them,
# so the toy data is made here instead.
PACKAGES = [
    "yacs",
    "pycocotools",
    "termcolor",
    "tabulate",
    "cloudpickle",
    "omegaconf==2.3.1",
    "portalocker",
    "pyyaml",
    "tqdm",
    "pillow",
    "pydot",
    "pyparsing",
    "attrs",
    "cityscapesscripts",
    "pyquaternion",
    "tensorboard",
    "protobuf",
    "absl-py",
    "pytest",
    "iniconfig",
    "pluggy",
    "packaging",
    "pygments",
]
# Published as source only (pure Python): built into a wheel here, at the versions `make install`
# resolves (omegaconf 2.x's parser runtime is pinned by omegaconf itself).
SOURCE_ONLY = ["fvcore==0.1.5.post20221221", "iopath==0.1.9", "antlr4-python3-runtime==4.9.3"]
PLATFORMS = [
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_28_x86_64",
]  # glibc >= 2.28 (pillow 13 has no older wheels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the target's Python, X.Y (default 3.12)")
    parser.add_argument("--out", type=Path, default=WHEELHOUSE, help=f"the folder (default {WHEELHOUSE})")
    args = parser.parse_args()
    abi = "cp" + args.python_version.replace(".", "")
    target = [
        "--only-binary",
        ":all:",
        "--python-version",
        args.python_version,
        "--implementation",
        "cp",
        "--abi",
        abi,
        *(f"--platform={platform}" for platform in PLATFORMS),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "install_detectron2.py"), "--wheel-dir", str(args.out)], check=True
    )
    # --no-deps per package plus their own small dependencies listed above: pip's resolver would
    # otherwise fetch numpy/torch, which the target already has.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-d",
            str(args.out),
            *target,
            "-c",
            str(REPO / "constraints.txt"),
            *PACKAGES,
        ],
        check=True,
    )
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(args.out), *SOURCE_ONLY], check=True)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TOY_IMAGES

    subprocess.run(
        [sys.executable, "-m", "dcl", "data", "toy", "--out", str(args.out / "toy"), *TOY_IMAGES], check=True, cwd=REPO
    )
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(f"{args.out}: {len(list(args.out.glob('*.whl')))} wheels and the toy data, {size:.1f} MB")
    if size > LIMIT_MB:
        print(f"prepare_offline: error: {size:.0f} MB exceeds {LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
