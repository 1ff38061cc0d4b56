"""``dcl info``: what this installation runs on (versions, detectron2 build, shims applied)."""

from __future__ import annotations

import argparse
import json
from importlib import metadata

__all__ = ["environment_info", "add_arguments", "run"]

_DISTRIBUTIONS = (
    "dcl-pipeline",
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "pycocotools",
    "faster-coco-eval",
    "cityscapesscripts",
    "snakemake",
    "snakemake-executor-plugin-slurm",
)


def environment_info() -> dict:
    """Package versions, detectron2's location and build, the shims applied, CUDA devices."""
    import dcl.compat  # noqa: F401  (before detectron2)
    import detectron2
    import torch

    versions = {}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "detectron2": {
            "version": detectron2.__version__,
            "path": detectron2.__path__[0],
            "compiled_extension": dcl.compat.has_extension(),
        },
        "compat_shims": list(dcl.compat.APPLIED),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, version in info["versions"].items():
        print(f"{name:34s} {version or '-'}")
    d2 = info["detectron2"]
    print(f"{'detectron2':34s} {d2['version']} at {d2['path']}")
    print(f"{'detectron2._C (compiled extension)':34s} {'yes' if d2['compiled_extension'] else 'no'}")
    print(f"{'dcl.compat shims applied':34s} {', '.join(info['compat_shims']) or 'none'}")
    print(f"{'CUDA devices':34s} {', '.join(info['cuda_devices']) or 'none'}")
    return 0
