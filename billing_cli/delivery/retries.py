"""The retry policy of every call to an outside service (S3, Stripe, SMTP, the completion webhook).

A transient failure is retried with exponential backoff and jitter, at most `attempts` times and
`seconds` in all (DELIVERY_MAX_ATTEMPTS, DELIVERY_MAX_RETRY_SECONDS). Once the run is told to stop
(`stopping`: SIGTERM, which Kubernetes follows with SIGKILL 30 s later), no new attempt is started
and a backoff under way ends at once: the call fails with its last error, and the next run
completes the step (every step is idempotent). Without it, a call that had begun retrying kept the
pod for up to a minute after SIGTERM, past the grace period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def retrying(transient: Callable[[BaseException], bool], *, attempts: int, seconds: float, multiplier: float,
             longest: float, stopping: threading.Event | None = None) -> Any:
    """A tenacity `Retrying` (call it with the function and its arguments), reraising the last error."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

    def retried(exc: BaseException) -> bool:
        return transient(exc) and not (stopping is not None and stopping.is_set())

    return Retrying(retry=retry_if_exception(retried), reraise=True,
                    stop=stop_after_attempt(attempts) | stop_after_delay(seconds),
                    wait=wait_random_exponential(multiplier=multiplier, max=longest),
                    sleep=stopping.wait if stopping is not None else time.sleep)
