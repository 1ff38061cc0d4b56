"""Stop signals that arrive before ``dcl train`` has imported torch and detectron2 (~2 s).

``dcl train`` is often signalled right after it starts (Slurm's early pre-timeout signal,
``scancel --signal``, a Ctrl-C): :func:`recorded` installs a handler that only notes the signal,
and the training's own handler (:class:`dcl.training.preemption.StopSignal`) takes the note over, so the run
still ends as ``interrupted`` (exit 75) with its ``run.json``. Standard library only.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

__all__ = ["RECEIVED", "STOP_SIGNALS", "recorded", "take"]

# What ends a training early with a checkpoint: Slurm's TERM (time limit, pre-emption), USR1 and
# Ctrl-C (a second Ctrl-C aborts at once, exit 130).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
RECEIVED: list[int] = []  # signal numbers, in arrival order


def _note(signum: int, frame: object) -> None:
    RECEIVED.append(signum)


@contextlib.contextmanager
def recorded() -> Iterator[None]:
    """Note the stop signals inside the block (until a handler of the training replaces this
    one); then restore the caller's handlers and forget what was not taken."""
    previous = {signum: signal.signal(signum, _note) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        RECEIVED.clear()


def take() -> int | None:
    """The first signal noted so far (and forget them all), or None."""
    first = RECEIVED[0] if RECEIVED else None
    RECEIVED.clear()
    return first
