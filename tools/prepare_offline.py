#!/usr/bin/env python
"""Put every wheel the GPU device check needs, except PyTorch, into ``wheelhouse/`` (ignored by
git, travels with the working tree), for a bare machine with Python 3.12 and PyTorch but no
internet (docs/gpu.md):

    python tools/prepare_offline.py            # here, with internet
    # there:
    python -m pip install --no-index --find-links wheelhouse --no-deps wheelhouse/*.whl
    python -m pip install --no-index --no-deps --no-build-isolation -e .
    python benchmarks/bench_gpu.py

Our pure-Python detectron2 wheel is built by tools/install_detectron2.py --wheel-dir; the rest
are binary wheels for CPython 3.12 on manylinux x86_64 from PyPI, pinned by constraints.txt where
it pins them, with their dependencies except those the target has (torch, torchvision, numpy).
Fails if the folder grows past 60 MB.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / "wheelhouse"
LIMIT_MB = 60
# The non-stdlib modules that `benchmarks/bench_gpu.py` loads besides torch/torchvision/numpy
# (listed from sys.modules after importing it): detectron2 v0.6's imports, opencv (~50 MB) included.
PACKAGES = ["fvcore", "iopath", "yacs", "pycocotools", "termcolor", "tabulate", "cloudpickle", "omegaconf",
            "portalocker", "pyyaml", "tqdm", "pillow", "pydot", "pyparsing", "attrs", "opencv-python-headless"]
# Published as source only (pure Python): built into a wheel here.
SOURCE_ONLY = ["antlr4-python3-runtime==4.9.3"]  # omegaconf 2.x's parser runtime
TARGET = ["--only-binary", ":all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64"]


def main() -> int:
    WHEELHOUSE.mkdir(exist_ok=True)
    subprocess.run([sys.executable, str(REPO / "tools" / "install_detectron2.py"), "--wheel-dir", str(WHEELHOUSE)],
                   check=True)
    # --no-deps per package plus their own small dependencies listed above: pip's resolver would
    # otherwise fetch numpy/torch, which the target already has.
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(WHEELHOUSE), *TARGET,
                    "-c", str(REPO / "constraints.txt"), *PACKAGES], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(WHEELHOUSE), *SOURCE_ONLY],
                   check=True)
    size = sum(p.stat().st_size for p in WHEELHOUSE.iterdir()) / 2**20
    print(f"{WHEELHOUSE}: {len(list(WHEELHOUSE.iterdir()))} wheels, {size:.1f} MB")
    if size > LIMIT_MB:
        print(f"prepare_offline: error: {size:.0f} MB exceeds {LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
