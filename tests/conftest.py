"""Fixtures shared by the test modules."""
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def toy_datasets(tmp_path_factory):
    """A small toy COCO + Cityscapes dataset (8 train, 4 val images), made once per module."""
    root = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "dcl", "data", "toy", "--out", str(root), "--num-train", "8",
                    "--num-val", "4"], check=True, capture_output=True)
    return root


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (checks that no test depends on an earlier one)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
