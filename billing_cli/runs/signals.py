"""SIGTERM (Kubernetes) and Ctrl-C during a run: stop taking new work, finish what is in flight."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def stop_on_signals(warn: Callable[[str], None]) -> Iterator[threading.Event]:
    """Yield an event that is set on SIGTERM or SIGINT; jobs check it between units of work.
    A second Ctrl-C stops at once (KeyboardInterrupt)."""
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        warn(f"{signal.Signals(signum).name} received: finishing the work in flight, then stopping")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
