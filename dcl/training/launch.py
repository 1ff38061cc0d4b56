"""Start the worker processes of a distributed run on one machine, and end them together.

:func:`launch` is detectron2's ``launch`` (``mp.spawn`` of one worker per local rank, rank
``machine_rank * num_workers + local_rank``, a per-machine process group for
``comm.get_local_rank``) with two differences:

* CPU workers: detectron2's worker set-up requires CUDA (NCCL, ``torch.cuda.set_device``). With
  ``backend="gloo"`` the workers set up the same process groups on gloo, and each worker uses
  ``cpu_count / num_workers`` threads unless ``OMP_NUM_THREADS`` says otherwise. With
  ``backend="nccl"`` the worker is detectron2's own ``_distributed_worker``, unchanged.
* Failures end the launch. torch's ``spawn`` stops the other workers of a failed one with
  SIGTERM, which a ``dcl train`` worker reads as a stop request (finish the iteration,
  checkpoint), and a worker blocked in a collective waiting for the failed one never gets
  there. Here each worker leads its own process group (with its data-loader workers), dies with
  the launcher (``PR_SET_PDEATHSIG``) and exits at once when it raises; once any worker exits
  with a code outside ``clean_exits`` the others are killed (SIGKILL to their groups) and
  :func:`launch` returns.

Signals for the workers (Slurm's pre-timeout SIGTERM) must be forwarded by the caller: the
workers are not in the launcher's process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing.connection
import os
import signal
import socket
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

__all__ = ["DEFAULT_TIMEOUT", "LaunchResult", "launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)  # as detectron2's launch
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """``exit_codes[local_rank]`` (negative: killed by that signal); ``failed``: the local rank of
    the first worker that exited with a code outside ``clean_exits``, or None."""

    exit_codes: list[int]
    failed: Optional[int]


def free_local_url() -> str:
    """``tcp://127.0.0.1:<port>`` with a port free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def launch(
    main_func: Callable[..., Any],
    num_workers: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    backend: str = "nccl",
    args: Sequence[Any] = (),
    clean_exits: Sequence[int] = (0,),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> LaunchResult:
    """Run ``main_func(*args)`` in ``num_workers`` new processes of a ``num_workers *
    num_machines`` process group; return when all have exited, or at once after killing the
    others when one fails.

    Args:
        main_func, args: picklable (the workers are spawned, not forked).
        dist_url: rendezvous URL (``tcp://host:port``); ``"auto"``: a free local port (one machine).
        backend: ``"nccl"`` (GPUs, detectron2's worker) or ``"gloo"`` (CPUs).
        clean_exits: exit codes that are not failures (e.g. an interrupted run's).
    """
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be nccl or gloo, got {backend!r}")
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' works on one machine only")
        dist_url = free_local_url()
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    world_size = num_workers * num_machines
    workers = [
        context.Process(
            target=_worker,
            daemon=False,
            name=f"dcl-worker-{local_rank}",
            args=(
                local_rank,
                main_func,
                world_size,
                num_workers,
                machine_rank,
                dist_url,
                backend,
                tuple(args),
                timeout,
            ),
        )
        for local_rank in range(num_workers)
    ]
    try:
        for process in workers:
            process.start()
        failed = None
        running = list(workers)
        while running and failed is None:
            # In the order they ended: a worker that fails takes its peers down with it.
            for sentinel in multiprocessing.connection.wait([p.sentinel for p in running]):
                process = next(p for p in running if p.sentinel == sentinel)
                process.join()
                running.remove(process)
                if failed is None and process.exitcode not in clean_exits:
                    failed = workers.index(process)
    finally:
        _kill(workers)
    return LaunchResult([p.exitcode for p in workers], failed)


def _kill(workers: list) -> None:
    """SIGKILL every started worker still running, and what is left of its process group."""
    for process in workers:
        if process.pid is None:
            continue
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # before its setpgid the group below does not exist yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its data-loader workers
    for process in workers:
        if process.pid is not None:
            process.join()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker(
    local_rank: int,
    main_func,
    world_size: int,
    num_workers: int,
    machine_rank: int,
    dist_url: str,
    backend: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    os.setpgid(0, 0)
    _die_with_parent()
    from dcl.io import InputError

    try:
        if backend == "nccl":
            import dcl.compat  # noqa: F401  (before detectron2)
            from detectron2.engine.launch import _distributed_worker

            _distributed_worker(local_rank, main_func, world_size, num_workers, machine_rank, dist_url, args, timeout)
        else:
            _gloo_worker(local_rank, world_size, num_workers, machine_rank, dist_url, timeout)
            main_func(*args)
    except SystemExit:
        raise
    except InputError as error:  # bad input: one line, as the CLI prints it
        print(f"worker {machine_rank * num_workers + local_rank}: error: {error}", file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    else:
        return
    # A failed worker ends now: Python's exit would terminate and join its data-loader workers,
    # which ignore SIGTERM (dcl.training.preemption) and, while the traceback holds the loader, never stop.
    # The launcher kills them with the worker's process group.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _gloo_worker(
    local_rank: int, world_size: int, num_workers: int, machine_rank: int, dist_url: str, timeout: timedelta
) -> None:
    """detectron2's ``_distributed_worker`` set-up, on gloo and without CUDA."""
    import dcl.compat
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    dcl.compat.allow_cpu_ddp()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_workers))
    dist.init_process_group(
        "gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_workers + local_rank,
        timeout=timeout,
    )
    for machine in range(world_size // num_workers):
        group = dist.new_group(list(range(machine * num_workers, (machine + 1) * num_workers)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
