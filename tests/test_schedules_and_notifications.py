"""Schedules as data, `billing legacy-run`, and completion notifications (e-mail and signed webhook)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from billing_cli.schedules import ScheduleError, parse_schedule

runner = CliRunner()


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


# -- schedules ------------------------------------------------------------------------------------

def test_six_field_seconds_first_schedules() -> None:
    hourly = parse_schedule("aggregate-hourly", "0 0 * * * *")
    monthly = parse_schedule("invoice-monthly", "0 0 0 1 * *")
    assert (hourly.five_field, monthly.five_field) == ("0 * * * *", "0 0 1 * *")
    assert hourly.describe() == "At the start of every hour (UTC)"
    assert monthly.describe() == "At 00:00 on the first day of every month (UTC)"
    now = datetime(2024, 1, 31, 22, 30, tzinfo=UTC)
    assert monthly.next_runs(now, 2) == [datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)]
    assert hourly.next_runs(now, 1) == [datetime(2024, 1, 31, 23, tzinfo=UTC)]
    assert monthly.fires_at(datetime(2024, 2, 1, 0, 0, 42, tzinfo=UTC))
    assert not monthly.fires_at(datetime(2024, 2, 1, 0, 1, tzinfo=UTC))
    assert parse_schedule("x", "15 2 * * 1").five_field == "15 2 * * 1"  # five fields are accepted


@pytest.mark.parametrize("expression,message", [
    ("30 0 * * * *", "seconds field must be 0"),
    ("0 0 25 * * *", "not a valid cron expression"),
    ("0 0 0 31 2 *", "not a valid cron expression"),
    ("every hour", "use six fields"),
])
def test_bad_schedules(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule("x", expression)


def test_schedule_command_renders_crontab_and_k8s(clean_env) -> None:
    k8s = run("schedule", "--format", "k8s", RUN_SCHEDULE="0 30 6 2 * *")
    assert k8s.exit_code == 0
    assert k8s.output.splitlines() == ['aggregate-hourly: "0 * * * *"', 'invoice-monthly: "0 0 * * *"',
                                       'legacy-run: "30 6 2 * *"', 'reconcile: "0 6 * * *"']
    crontab = run("schedule", "--format", "crontab", RUN_SCHEDULE="0 30 6 2 * *")
    assert crontab.exit_code == 0 and crontab.output.splitlines()[0] == "CRON_TZ=UTC"
    assert ("\n0 * * * *  /usr/bin/flock -n /run/lock/billing-aggregate-hourly.lock /opt/billing/venv/bin/billing "
            "aggregate-hourly >> /var/log/billing/aggregate-hourly.log 2>&1\n") in crontab.output
    assert ("\n# legacy-run, at 06:30 on the second day of every month (UTC): the older all-in-one\n" in crontab.output)
    assert "\n# 30 6 2 * *  /usr/bin/flock -n /run/lock/billing-legacy-run.lock " in crontab.output
    table = run("schedule", "--plain", "--count", "2")
    assert 'schedule job=legacy-run six_field="0 0 0 1 * *" five_field="0 0 1 * *"' in table.output
    bad = run("schedule", RUN_SCHEDULE="5 0 0 1 * *")
    assert bad.exit_code == ExitCode.CONFIG and "seconds field must be 0" in bad.output
    assert run("schedule", "--format", "yaml").exit_code == ExitCode.USAGE


# -- legacy-run -------------------------------------------------------------------------------------

def test_legacy_run_invoices_the_configured_month_with_the_same_code(clean_env, billed, mail, engine) -> None:
    other_minute = (datetime.now(UTC).minute + 30) % 60  # a schedule that certainly does not fire now
    schedule = f"0 {other_minute} * * * *"
    result = run("legacy-run", DATABASE_URL=billed, PROCESS_MONTH="2024-01", RUN_SCHEDULE=schedule)
    assert result.exit_code == 0, result.output
    assert "start job=legacy-run month=2024-01 dry_run=false" in result.output
    assert "summary job=legacy-run month=2024-01 found=3 processed=3 invoiced=3" in result.output
    assert f"RUN_SCHEDULE '{schedule}'" in result.output and "does not fire" in result.output
    every_minute = run("legacy-run", DATABASE_URL=billed, PROCESS_MONTH="2024-01", RUN_SCHEDULE="0 * * * * *")
    assert every_minute.exit_code == 0 and "does not fire" not in every_minute.output
    again = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed)
    assert "already_invoiced=3" in again.output  # the same invoices, not a second set


def test_legacy_run_dry_run_and_an_invalid_schedule(clean_env, billed) -> None:
    dry = run("legacy-run", DATABASE_URL=billed, PROCESS_MONTH="2024-01", DRY_RUN="true")
    assert dry.exit_code == 0 and "dry_run=true" in dry.output
    bad = run("legacy-run", DATABASE_URL=billed, RUN_SCHEDULE="0 0 0 32 * *")
    assert bad.exit_code == ExitCode.CONFIG and "RUN_SCHEDULE" in bad.output


# -- notifications ---------------------------------------------------------------------------------

class Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    failures: list[int] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Hook.failures:
            self.send_response(Hook.failures.pop(0))
            self.end_headers()
            return
        Hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    Hook.received, Hook.failures = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/billing"
    server.shutdown()


def verify(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """What a receiver does (the snippet in docs/operations.md)."""
    parts = dict(item.split("=", 1) for item in headers["billing-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def notify_env(billed, mail, webhook) -> dict[str, str]:
    return {"DATABASE_URL": billed, "NOTIFY_ON_COMPLETION": "true", "NOTIFY_EMAIL": "finance@example.com",
            "INVOICE_SMTP_HOST": "127.0.0.1", "INVOICE_SMTP_PORT": str(mail.port), "INVOICE_SMTP_SECURITY": "none",
            "INVOICE_SMTP_USERNAME": mail.username, "INVOICE_SMTP_PASSWORD": mail.password,
            "INVOICE_SMTP_FROM": "billing@example.cloud", "NOTIFY_WEBHOOK_URL": webhook,
            "NOTIFY_WEBHOOK_SECRET": "whsec-SECRET-123", "DELIVERY_MAX_RETRY_SECONDS": "5"}


def test_completion_email_and_signed_webhook(clean_env, billed, mail, webhook, engine) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET price_plan_id = NULL WHERE id = 'org-3'"))
    Hook.failures = [503]  # the receiver is briefly down: retried

    result = run("invoice-monthly", "--month", "2024-01", **notify_env(billed, mail, webhook))

    assert result.exit_code == ExitCode.PARTIAL
    (notification,) = mail.received
    assert notification.recipients == ["finance@example.com"]
    assert notification.message["Subject"] == "[billing] invoice-monthly 2024-01: partial (1 failed)"
    body = notification.message.get_content()
    for expected in ("Outcome:         partial", "Processed:       3", "Errors by component: data 1, pdf 0",
                     "Revenue: 38.50 USD", "org-3: data: no price plan", "Dry run:         no"):
        assert expected in body
    (headers, raw), = Hook.received
    assert verify(headers, raw, "whsec-SECRET-123") and not verify(headers, raw, "wrong")
    payload = json.loads(raw)
    assert payload["job"] == "invoice-monthly" and payload["outcome"] == "partial"
    assert payload["revenue"] == {"USD": "38.50"} and payload["counts"]["failed"] == 1
    assert payload["failed"] == [{"organization_id": "org-3", "errors": [
        ["data", "no price plan: set organizations.price_plan_id to a plan id"]]}]
    assert "whsec-SECRET-123" not in result.output and mail.password not in result.output


def test_notified_even_when_the_run_fails_and_never_for_a_dry_run(clean_env, billed, mail, webhook) -> None:
    env = notify_env(billed, mail, webhook)
    dry = run("invoice-monthly", "--month", "2024-01", "--dry-run", **env)
    assert dry.exit_code == 0 and mail.received == [] and Hook.received == []
    asked = run("invoice-monthly", "--month", "2024-01", "--dry-run", **env, NOTIFY_ON_DRY_RUN="yes")
    assert asked.exit_code == 0 and "(dry run)" in mail.received[-1].message["Subject"]

    down = run("invoice-monthly", "--month", "2024-01", **{**env, "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db"})
    assert down.exit_code == ExitCode.DATABASE_UNAVAILABLE
    failure = mail.received[-1].message
    assert failure["Subject"] == "[billing] invoice-monthly 2024-01: failed"
    assert "Stopped because: cannot reach PostgreSQL at 127.0.0.1:1/db" in failure.get_content()
    assert json.loads(Hook.received[-1][1])["outcome"] == "failed"


def test_a_notification_failure_never_fails_the_run(clean_env, billed, mail, webhook) -> None:
    env = notify_env(billed, mail, webhook)
    Hook.failures = [500] * 10
    mail.fail_next(1, 550)
    result = run("invoice-monthly", "--month", "2024-01", **{**env, "DELIVERY_MAX_ATTEMPTS": "2"})
    assert result.exit_code == 0
    assert "notification not delivered: webhook" in result.output and "answered 500" in result.output
    assert "notification not delivered: completion e-mail" in result.output


@pytest.fixture
def not_http():
    """A port that answers every request with a line that is not HTTP (a TLS-only or SSH port, a
    misrouted proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stopped.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/billing"
    stopped.set()
    thread.join()
    server.close()


def test_a_webhook_that_answers_garbage_is_a_warning_and_never_fails_the_run(clean_env, billed, engine,
                                                                             not_http) -> None:
    from sqlalchemy import text

    result = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed, NOTIFY_WEBHOOK_URL=not_http,
                 NOTIFY_WEBHOOK_SECRET="whsec-SECRET-123", DELIVERY_MAX_RETRY_SECONDS="2")
    assert result.exit_code == 0, (result.exit_code, repr(result.exception))
    assert "notification not delivered: webhook" in result.output
    assert "summary job=invoice-monthly" in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices")).scalar_one() == 3


def test_aggregate_hourly_notifies_only_on_errors_when_asked(clean_env, billed, mail, webhook) -> None:
    env = {**notify_env(billed, mail, webhook), "NOTIFY_ON_AGGREGATE_ERRORS": "true"}
    ok = run("aggregate-hourly", "--hour", "2024-01-31T13", **env)
    assert ok.exit_code == 0 and mail.received == [] and Hook.received == []
    down = run("aggregate-hourly", **{**env, "DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert down.exit_code == ExitCode.DATABASE_UNAVAILABLE
    assert mail.received[-1].message["Subject"].startswith("[billing] aggregate-hourly ")
