"""After a run: push its metrics and send its completion notifications. Neither can fail the run:
a failure is a warning in the log."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings
    from ..summary import RunSummary


def push_metrics(settings: Settings, warn: Callable[[str], None], summary: RunSummary,
                 shard: str | None = None) -> None:
    """Run metrics to the Pushgateway (real runs only: a dry run must not look like a success)."""
    if not settings.pushgateway_url or summary.dry_run:
        return
    from ..delivery.metrics import MetricsError, push_run_metrics

    try:
        push_run_metrics(settings.pushgateway_url, summary, shard=shard,
                         timeout_seconds=settings.delivery_timeout_seconds)
    except MetricsError as exc:
        warn(str(exc))


def notify(settings: Settings, warn: Callable[[str], None], notice: Callable[[str], None],
           summary: RunSummary) -> None:
    """Completion e-mail and webhook; a failure here is a warning, never a failed billing run."""
    from ..delivery.notify import NotifyError
    from .wiring import notifiers_from_settings

    if summary.dry_run and not settings.notify_on_dry_run:
        return
    for notifier in notifiers_from_settings(settings):
        kind = type(notifier).__name__.removesuffix("Notifier").lower()
        try:
            notifier.notify(summary)
        except NotifyError as exc:
            warn(f"notification not delivered: {exc}")
        except Exception as exc:  # noqa: BLE001 - the run is over: never fail it here
            # The run is over and recorded: a failure nobody foresaw in a notifier must not turn it
            # into a failed (and retried) run. Only the error's type: its text may hold a secret.
            warn(f"notification not delivered: {kind}: unexpected error {type(exc).__name__}")
        else:
            notice(f"notification sent ({kind})")
