"""Where a ``dcl train`` process sits in a cluster: machine count, machine rank, rendezvous URL.

From the command line when given, else from the Slurm job step that started the process: each
task of a step of T tasks (``srun --ntasks-per-node=K dcl train --num-gpus G ...`` on N nodes,
T = N x K) is one detectron2 "machine" of G workers: T machines, rank ``$SLURM_PROCID`` and
``tcp://<first host of $SLURM_STEP_NODELIST>:<port>`` (``$MASTER_PORT``, else 20000 + job id mod
20000: the same on every node, different between jobs). K = 1 is the usual layout (one task per
node starts the node's G workers); with K > 1 each task needs GPUs of its own
(``--gpus-per-task=G``). Anything else is one machine. Also the pre-timeout signal a training job asks Slurm
for, and the requeue of a job for the next chunk of a training. Standard library only.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
from typing import Mapping, Optional

from dcl.io import InputError

__all__ = [
    "DistributedLayout",
    "expand_hostlist",
    "requeue_own_job",
    "resolve_distributed",
    "slurm_job",
    "stop_signal_option",
]

# SIGTERM, to every process of the job steps (no `B:`, which reaches only the batch shell), this
# long before the time limit: time for the current iteration and a checkpoint.
STOP_SIGNAL, STOP_SIGNAL_SECONDS = "TERM", 300
# Slurm may send the signal up to a minute before the requested offset.
SIGNAL_EARLY_SECONDS = 60


def stop_signal_seconds(runtime_minutes: int) -> int:
    """Seconds before a training job's time limit that it is signalled to checkpoint and stop:
    5 minutes, but at most half the limit and at least Slurm's one-minute slack (so a short job
    still trains before it is signalled, as far as a limit of 2 minutes or more allows)."""
    half = int(runtime_minutes) * 60 // 2
    return max(SIGNAL_EARLY_SECONDS, min(STOP_SIGNAL_SECONDS, half))


def stop_signal_option(runtime_minutes: int) -> str:
    """``sbatch --signal`` for a training job with this time limit (:func:`stop_signal_seconds`)."""
    return f"--signal={STOP_SIGNAL}@{stop_signal_seconds(runtime_minutes)}"


@dataclasses.dataclass(frozen=True)
class DistributedLayout:
    """Where this process sits: ``num_machines``, ``machine_rank``, ``dist_url``; ``source`` says
    where they came from ("command line", "slurm", "single machine"); ``machines_per_node``: the
    Slurm step's tasks per node (1 elsewhere)."""

    num_machines: int
    machine_rank: int
    dist_url: str
    source: str
    machines_per_node: int = 1


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist expression (``gpu[01-03,07],login-1``) as ``scontrol show
    hostnames`` does: comma-separated items, each with any number of ``[...]`` groups of numbers
    and ranges (zero padding kept)."""
    items, depth, current = [], 0, ""
    for char in hostlist.strip():
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"malformed Slurm hostlist: {hostlist!r}")
        current += char
    if depth:
        raise ValueError(f"malformed Slurm hostlist: {hostlist!r}")
    items.append(current)
    hosts = []
    for item in filter(None, items):
        pieces = re.split(r"\[([^\]]*)\]", item)  # literal, group, literal, group, ..., literal
        choices = []
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                choices.append([piece])
                continue
            values = []
            for part in piece.split(","):
                low, _, high = part.partition("-")
                if not low.isdigit() or (high and not high.isdigit()):
                    raise ValueError(f"malformed Slurm hostlist range {part!r} in {hostlist!r}")
                width = len(low)
                values += [f"{n:0{width}d}" for n in range(int(low), int(high or low) + 1)]
            choices.append(values)
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def resolve_distributed(
    num_machines: Optional[int],
    machine_rank: Optional[int],
    dist_url: Optional[str],
    env: Optional[Mapping[str, str]] = None,
) -> DistributedLayout:
    """Machine count, machine rank and rendezvous URL: from the command line where given, else
    from the Slurm job step (one machine per task), else a single machine.

    Raises:
        InputError: a multi-node Slurm allocation not started through ``srun``, or a step whose
            tasks are spread unevenly over its nodes.
    """
    env = dict(os.environ if env is None else env)
    if num_machines is not None and machine_rank is not None and dist_url is not None:
        return DistributedLayout(num_machines, machine_rank, dist_url, "command line")
    if "SLURM_JOB_ID" in env and num_machines is None:
        in_step = "SLURM_STEP_ID" in env
        nodes = int(env.get("SLURM_STEP_NUM_NODES" if in_step else "SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) if in_step else 1
        if nodes > 1 and not in_step:
            raise InputError(
                f"this Slurm job has {nodes} nodes but dcl train was not started by srun; "
                "start one task per node: srun --ntasks-per-node=1 dcl train ..."
            )
        if in_step and tasks > 1:
            if tasks % nodes:
                raise InputError(
                    f"the Slurm step runs {tasks} tasks on {nodes} nodes; dcl train needs the same number "
                    "of tasks on every node (usually one, which starts --num-gpus workers): "
                    "srun --ntasks-per-node=1 dcl train ..."
                )
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
            try:
                master = expand_hostlist(nodelist)[0]
            except (ValueError, IndexError):
                raise InputError(f"cannot read the first host of the Slurm node list {nodelist!r}") from None
            port = int(env.get("MASTER_PORT") or 20000 + int(re.sub(r"\D", "", env["SLURM_JOB_ID"]) or 0) % 20000)
            return DistributedLayout(
                tasks,
                int(env.get("SLURM_PROCID", "0")) if machine_rank is None else machine_rank,
                f"tcp://{master}:{port}" if dist_url is None else dist_url,
                "slurm",
                tasks // nodes,
            )
    machines = 1 if num_machines is None else num_machines
    if machines > 1 and (machine_rank is None or dist_url is None):
        raise InputError("--num-machines > 1 outside a multi-node Slurm step needs --machine-rank and --dist-url")
    # "auto": a free local port, so concurrent single-node jobs on one host do not collide.
    return DistributedLayout(
        machines,
        machine_rank or 0,
        dist_url or "auto",
        "command line" if num_machines is not None else "single machine",
    )


def slurm_job(env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The Slurm job this process runs in (for ``run.json``), or None outside Slurm."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return None
    return {
        "job_id": env["SLURM_JOB_ID"],
        "nodes": env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST")),
        "ntasks": int(env["SLURM_NTASKS"]) if env.get("SLURM_NTASKS", "").isdigit() else None,
    }


def requeue_own_job(max_chunks: int, chunks_used: int) -> str:
    """Put the Slurm batch job this process runs in back into the queue (``scontrol requeue``,
    same job id, so Snakemake keeps waiting for it), for the next chunk of an interrupted
    training; Slurm then ends this job. Returns what happened, for the log."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return "not in a Slurm job: nothing requeued"
    if chunks_used >= max_chunks:
        return f"{chunks_used} of at most {max_chunks} chunks used: not requeued (raise max_chunks to go on)"
    # scancel sends the same SIGTERM as a pre-emption or the pre-timeout signal, but marks the job
    # CANCELLED first: a job someone cancelled must stay cancelled.
    try:
        state = subprocess.run(
            ["squeue", "--noheader", "--jobs", job_id, "--format", "%T"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"squeue --jobs {job_id} failed: {error}: not requeued"
    if state != "RUNNING":
        return f"Slurm job {job_id} is {state or 'not in the queue'} (cancelled?): not requeued"
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"scontrol requeue {job_id} failed: {error}"
    if done.returncode != 0:
        return f"scontrol requeue {job_id} failed: {(done.stderr or done.stdout).strip()}"
    return f"Slurm job {job_id} requeued for chunk {chunks_used + 1} of at most {max_chunks}"
