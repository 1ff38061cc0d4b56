"""Fixtures for the Slurm tests: a real single-node cluster on this machine.

The session fixture ``slurm_cluster`` starts the cluster with ``start-slurm.sh`` (installing
slurm-wlm and munge with apt-get on first use) and stops it at the end of the session if it was
not running before. Without root or apt-get the tests skip with the reason; under ``CI=true`` they
fail instead, so CI cannot silently stop testing the cluster path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
START_SCRIPT = HERE / "start-slurm.sh"
STOP_SCRIPT = HERE / "stop-slurm.sh"
SLURM_DIR = Path(os.environ.get("DCL_SLURM_DIR", "/tmp/dcl-slurm"))
PARTITION = os.environ.get("DCL_SLURM_PARTITION", "dcltest")
# Installing the packages takes ~10 s on a CI machine; leave room for a slow mirror.
START_TIMEOUT_S = 600


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster.

    Attributes:
        conf: its slurm.conf (what SLURM_CONF must point at).
        partition: the default partition's name.
        jobcomp_log: slurmctld's job completion log (one line per finished job).
        env: os.environ plus SLURM_CONF, for subprocesses.
    """

    conf: Path
    partition: str
    jobcomp_log: Path
    env: dict


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the Slurm tests must run in CI, but {reason}")
    pytest.skip(reason)


def _daemons_running() -> bool:
    for pid_file in (SLURM_DIR / "run/slurmctld.pid", SLURM_DIR / "run/slurmd.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the single-node cluster for the whole test session."""
    if os.geteuid() != 0:
        _unavailable("they need root to install and start Slurm (tests/cluster/start-slurm.sh)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        _unavailable("Slurm is not installed and apt-get is not available to install it")
    was_running = _daemons_running()
    env = {**os.environ, "DCL_SLURM_DIR": str(SLURM_DIR), "DCL_SLURM_PARTITION": PARTITION}
    started = subprocess.run([str(START_SCRIPT)], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if started.returncode != 0:
        pytest.fail(f"start-slurm.sh failed (exit {started.returncode}):\n{started.stderr}")
    conf = SLURM_DIR / "etc/slurm.conf"
    cluster = SlurmCluster(
        conf=conf,
        partition=PARTITION,
        jobcomp_log=SLURM_DIR / "log/jobcomp.log",
        env={**env, "SLURM_CONF": str(conf)},
    )
    yield cluster
    if not was_running:
        subprocess.run([str(STOP_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
