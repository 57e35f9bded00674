"""A circuit breaker per outside service, for one run: after K failures in a row that retrying
did not cure, the service is not called again in this run. Its steps stay pending (a later run
completes them) and the run ends in minutes instead of hours of timeouts.

Shared by the worker threads of a run. Only transient failures count (a refused request says
nothing about the service being down); any success closes the breaker again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CircuitOpen(Exception):
    """Raised instead of calling a service the breaker has given up on."""


class CircuitBreaker:
    def __init__(self, service: str, *, failures: int, is_transient: Callable[[BaseException], bool]) -> None:
        self.service = service
        self.limit = failures  # 0: never opens
        self._is_transient = is_transient
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        with self._lock:
            return 0 < self.limit <= self._failures

    def call(self, action: Callable[[], T]) -> T:
        if self.open:
            raise CircuitOpen(f"{self.service} failed {self.limit} times in a row in this run: not called again "
                              "until the next run (the step is left to it)")
        try:
            result = action()
        except BaseException as exc:
            if self._is_transient(exc):
                with self._lock:
                    self._failures += 1
            raise
        with self._lock:
            self._failures = 0
        return result
