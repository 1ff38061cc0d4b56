"""Pre-emption of ``dcl train``: stop signals, the agreed stop of all workers, exit code 75.

SIGTERM, SIGUSR1 or SIGINT (Slurm sends SIGTERM at a time limit and on pre-emption; ask for an
early one with ``sbatch --signal=TERM@300``, or ``B:TERM@300`` when ``dcl train`` runs in the
batch script itself rather than under ``srun``) lets the current iteration finish; then every
worker stops at the same iteration (:func:`agreed`), a checkpoint is saved at it, ``run.json``
is marked ``interrupted`` and the run exits with :data:`EXIT_INTERRUPTED`. During an evaluation
the signal stops it at once; during the set-up (Slurm may send its early signal up to a minute
before the requested offset, :mod:`dcl.training.early_signals` notes one that comes before torch is
imported) the run ends as interrupted before its first iteration. A second Ctrl-C aborts at once.

The state of one ``dcl train`` process is a :class:`StopSignal` that the caller creates and
passes on (to the trainer, its :class:`StopHook`, the evaluation). The launching process of
several workers passes the signals on to them (:func:`forward_signals_to_workers`);
data-loader workers ignore them (:func:`ignore_stop_signals`), so a signal sent to the whole
process group cannot kill them mid-step. In a Slurm batch job ``--max-chunks N`` requeues the
interrupted job itself (:func:`requeue_for_the_next_chunk`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any, Iterator, Optional

import dcl.compat  # noqa: F401  (before any detectron2 module)
import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.engine import hooks
from detectron2.utils import comm

from dcl.training import early_signals
from dcl.io import InputError
from dcl.runrecord import RunRecord, attempt_count
from dcl.slurm import requeue_own_job

__all__ = [
    "EXIT_INTERRUPTED",
    "STOP_SIGNALS",
    "StopHook",
    "StopSignal",
    "TrainingInterrupted",
    "agreed",
    "end_interrupted",
    "exit_if_interrupted",
    "forward_signals_to_workers",
    "ignore_stop_signals",
    "requeue_for_the_next_chunk",
]

logger = logging.getLogger("dcl.training.train")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, run again with --resume
STOP_SIGNALS = early_signals.STOP_SIGNALS


class TrainingInterrupted(BaseException):
    """A stop signal ended the run (a BaseException, so detectron2's ``except Exception`` blocks
    do not log it as a crash)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _default_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


@functools.cache
def _default_stop_signals_in_forked_children() -> None:
    # Forked helpers (detectron2's Cityscapes loader pool) must die on SIGTERM as by default:
    # Pool.terminate() stops its workers with it and waits for them, which hung `dcl train`
    # while they kept the training's handler. Data-loader workers ignore the signals (their
    # worker_init_fn). Cached: registered once per process.
    os.register_at_fork(after_in_child=_default_stop_signals)


class StopSignal:
    """The stop signal one process received. While ``defer`` is set (the set-up until the run
    record exists, the training loop) the handler only records the signal, and the run stops at
    ``stop_point`` (the loop: after the current iteration); otherwise (building the trainer,
    evaluation) it raises :class:`TrainingInterrupted` at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.defer = False
        self.stop_point = "after the current iteration"  # where a deferred stop happens (for the log)
        self.skipped_evaluation = False
        self._owner_pid: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def install(self) -> None:
        """Handle the stop signals in this process, deferred (taking over one received before)."""
        early = early_signals.take()  # received before torch was imported
        if self.signum is None and early is not None:
            logger.warning("received %s during start-up: stopping %s", signal.Signals(early).name, self.stop_point)
            self.signum = early
        _default_stop_signals_in_forked_children()
        self._owner_pid = os.getpid()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        self.defer = True

    def end_set_up(self) -> None:
        """The run record exists: a signal received during the set-up interrupts the run now; later
        ones at once (outside the training loop) or after the current iteration (in it)."""
        self.defer, self.stop_point = False, "after the current iteration"
        if self.requested:
            raise TrainingInterrupted(self.signum)

    @contextlib.contextmanager
    def handling(self, stop_point: str) -> Iterator[None]:
        """Handle the stop signals (deferred, stopping at ``stop_point``) inside the block; then
        restore the previous handlers (``dcl train`` called in-process)."""
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        self.stop_point = stop_point
        self.install()
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked data-loader worker: the main process handles the signal
        first = self.signum is None
        if not first and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort without waiting for the checkpoint
        self.signum = signum
        if first:
            logger.warning("received %s: stopping %s", self.name, self.stop_point if self.defer else "now")
            if not self.defer:
                raise TrainingInterrupted(signum)

    def raise_if_evaluation_skipped(self) -> None:
        """Interrupt the run if the signal skipped an evaluation (after the last step: still due)."""
        if self.skipped_evaluation:
            raise TrainingInterrupted(self.signum or signal.SIGTERM)

    @contextlib.contextmanager
    def deferred(self, defer: bool) -> Iterator[None]:
        previous, self.defer = self.defer, defer
        try:
            yield
        finally:
            self.defer = previous


def agreed(flag: bool) -> bool:
    """True if ``flag`` is set on any worker (all workers must call this together)."""
    if comm.get_world_size() == 1:
        return flag
    # NCCL reduces CUDA tensors only; gloo (CPU workers) CPU tensors.
    on_gpu = torch.distributed.get_backend() == torch.distributed.Backend.NCCL
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader ``worker_init_fn``: detectron2's seeding, plus immunity to the stop signals
    (Slurm may signal every process of the step; the main process decides when to stop)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    worker_init_reset_seed(worker_id)


def forward_signals_to_workers() -> None:
    """In the launching process: pass stop signals on to the worker processes."""
    import multiprocessing

    def forward(signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)


class StopHook(hooks.HookBase):
    """Counts completed iterations and ends the loop, on every worker at the same iteration,
    once a stop signal was received."""

    def __init__(self, stop: StopSignal):
        self.stop = stop

    def before_train(self) -> None:
        self.trainer.completed_iterations = self.trainer.start_iter
        self.stop.defer = True

    def after_step(self) -> None:
        self.trainer.completed_iterations = self.trainer.iter + 1
        if agreed(self.stop.requested):
            raise TrainingInterrupted(self.stop.signum or signal.SIGTERM)

    def after_train(self) -> None:
        self.stop.defer = False


def end_interrupted(stop: StopSignal, trainer: Any, record: Optional[RunRecord], signal_name: Optional[str]) -> None:
    """Checkpoint the completed iterations of ``trainer`` (a :class:`dcl.training.engine.Trainer`, or None
    before it exists) and record the interruption (every worker calls it)."""
    stop.defer = True  # no second interruption while saving
    if trainer is not None:
        trainer.save_progress()
    comm.synchronize()  # other workers must not exit before the checkpoint is written
    if record is not None:
        record.close(
            "interrupted",
            EXIT_INTERRUPTED,
            signal_name=signal_name,
            iteration=trainer.completed_iterations if trainer is not None else None,
        )


def exit_if_interrupted(stop: StopSignal, trainer: Any, record: Optional[RunRecord], error: BaseException) -> None:
    """After ``error`` ended a worker's run: if it is an interruption (:class:`TrainingInterrupted`,
    or an error after a stop signal, e.g. data-loader workers killed by the same signal: not a
    crash), :func:`end_interrupted` and exit with :data:`EXIT_INTERRUPTED`; else return."""
    if isinstance(error, TrainingInterrupted):
        end_interrupted(stop, trainer, record, signal.Signals(error.signum).name)
        logger.warning("%s; resume with --resume (exit code %d)", error, EXIT_INTERRUPTED)
    elif stop.requested and isinstance(error, Exception):
        logger.warning("error after %s (%s): treating the run as interrupted", stop.name, error)
        end_interrupted(stop, trainer, record, stop.name)
    else:
        return
    raise SystemExit(EXIT_INTERRUPTED) from None


def requeue_for_the_next_chunk(record_path: Path, max_chunks: int) -> None:
    """An interrupted training in a Slurm batch job continues in the same job, requeued: the
    workflow sees one job however many time limits or pre-emptions it takes (``--max-chunks``)."""
    try:
        attempts = attempt_count(record_path)
    except InputError as error:
        logger.warning("not requeued: %s", error)
        return
    logger.warning("%s", requeue_own_job(max_chunks, attempts))
