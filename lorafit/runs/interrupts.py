"""Stopping a training run: Ctrl-C (SIGINT) and SIGTERM both become KeyboardInterrupt, which the loop
answers by writing a checkpoint (the CLI then exits 130).

A checkpoint written on interrupt must describe one consistent moment: weights, optimizer and
scheduler after step k together with "k steps done" and the RNG state after step k. An interrupt that
landed between `optimizer.step()` and the bookkeeping that records the step would pair step k+1's
weights with step k's position, and the resumed run would apply step k+1 twice. `interrupts_deferred`
holds the signals over that short stretch (no forward or backward pass runs inside it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    """Python only lets the main thread install signal handlers (and only it receives signals)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, treat SIGTERM (a job scheduler stopping us) like Ctrl-C; restore after."""
    if not _in_main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then hand the first one received to the handler
    it had before (so Ctrl-C still raises KeyboardInterrupt, just after the block)."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if _in_main_thread() else {}
    if not previous or any(handler is None for handler in previous.values()):
        yield  # not the main thread, or a handler installed outside Python that we could not restore
        return
    received: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        signal.raise_signal(received[0])
