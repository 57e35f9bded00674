"""Prometheus metrics, pushed to a Pushgateway at the end of every (real) run.

`pushadd` with the grouping key {job, shard} (never the pod name, so series do not pile up per
pod), and for billing reconcile {job, shard, month}, one group per month checked: metrics not sent
by a push keep their previous value, which is how `billing_last_success_timestamp_seconds` survives
failed runs. Alert on `time() - billing_last_success_timestamp_seconds` (docs/operations.md).
"""

from __future__ import annotations

import time

from ..config.secret import mask_url_password
from ..summary import RunSummary


def _masked(text: str, url: str, masked: str) -> str:
    """An error text with the URL (and anything of it the error repeats) in its masked form."""
    return text.replace(url, masked)


class MetricsError(Exception):
    pass


def push_run_metrics(gateway_url: str, summary: RunSummary, *, shard: str | None = None,
                     timeout_seconds: float = 10) -> None:
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> None:
        metric = Gauge(name, doc, list(labels or {}), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    now = time.time()
    gauge("billing_run_duration_seconds", "Duration of the last run.", summary.seconds)
    gauge("billing_last_run_timestamp_seconds", "When the last run ended (Unix time).", now)
    gauge("billing_last_run_success", "1 if the last run succeeded, else 0.", 1 if summary.outcome == "succeeded" else 0)
    if summary.outcome == "succeeded":
        gauge("billing_last_success_timestamp_seconds", "When the job last succeeded (Unix time).", now)
    processed = summary.counts.get("processed", summary.counts.get("hours", 0))
    failed = summary.counts.get("failed", summary.counts.get("failed_hours", 0))
    gauge("billing_organizations_processed", "Organizations (or hours) processed by the last run.", processed)
    gauge("billing_organizations_failed", "Organizations (or hours) that failed in the last run.", failed)
    if "not_due" in summary.counts:
        gauge("billing_periods_not_due", "Organizations whose period of the run's month had not ended yet: left for "
              "a later run.", summary.counts["not_due"])
    if "orphan_events" in summary.counts:
        gauge("billing_orphan_usage_events", "Events of organization ids with no organizations row, in the last "
              "run's window (rolled up; billed once the organization exists).", summary.counts["orphan_events"])
    if "default_partition_events" in summary.counts:
        gauge("billing_usage_events_default_partition", "Events in usage_events' default partition: occurred_at "
              "outside every monthly partition (billed all the same; a clock off, or a backfill).",
              summary.counts["default_partition_events"])
    # Only a check that ran to its end counts the differences: one that failed (Stripe or S3 could not
    # be asked) or was interrupted knows nothing of those it did not reach, so the count of the last
    # finished check stays (pushadd) instead of a 0 that would clear BillingReconcileMismatch.
    if summary.job == "reconcile" and summary.outcome in ("succeeded", "mismatch"):
        differences = Gauge("billing_reconcile_differences", "Differences the last reconcile found, by kind "
                            "(0 everywhere: events, roll-ups, invoices and the services agree).", ["kind"],
                            registry=registry)
        differences.labels(kind="any").set(summary.counts.get("differences", 0))
        for kind, count in summary.errors.items():
            differences.labels(kind=kind).set(count)
    errors = Gauge("billing_errors", "Errors of the last run by component.", ["component"], registry=registry)
    for component, count in summary.errors.items():
        errors.labels(component=component).set(count)
    revenue = Gauge("billing_revenue", "Revenue invoiced by the last run, per currency (for dashboards; the "
                    "invoices are the record).", ["currency"], registry=registry)
    for currency, amount in summary.revenue.items():
        revenue.labels(currency=currency).set(float(amount))  # a metric, not money: never read back
    grouping = {"shard": (shard or "all").replace("/", "-of-")}
    if summary.job == "reconcile":  # a check of one month never overwrites another month's result
        grouping["month"] = str(summary.period)
    try:
        pushadd_to_gateway(gateway_url, job=f"billing-{summary.job}", grouping_key=grouping,
                           registry=registry, timeout=timeout_seconds)
    except Exception as exc:  # urllib raises assorted errors; a metrics failure is only a warning
        where = mask_url_password(gateway_url, keep_user=False)
        raise MetricsError(f"metrics push to {where} failed: {_masked(str(exc), gateway_url, where)}") from None
