"""Fixtures shared by the test modules."""

import os
import shutil
import subprocess
import sys

import pytest

# The toy data's size in the tests; tools/prepare_offline.py makes the same for machines that
# cannot generate it (no scipy/opencv there) and tools/device_check.sh names it here.
TOY_IMAGES = ["--num-train", "8", "--num-val", "4"]
PREMADE_TOY = "DCL_TEST_TOY_DATASETS"


@pytest.fixture(scope="module")
def toy_datasets(tmp_path_factory):
    """A small toy COCO + Cityscapes dataset (8 train, 4 val images), made once per module (or
    copied from ``$DCL_TEST_TOY_DATASETS``, made beforehand by ``dcl data toy``)."""
    root = tmp_path_factory.mktemp("toy")
    if os.environ.get(PREMADE_TOY):
        shutil.copytree(os.environ[PREMADE_TOY], root, dirs_exist_ok=True)
        return root
    subprocess.run(
        [sys.executable, "-m", "dcl", "data", "toy", "--out", str(root), *TOY_IMAGES], check=True, capture_output=True
    )
    return root


def pytest_addoption(parser):
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the collected tests in reverse order (checks that no test depends on an earlier one)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
