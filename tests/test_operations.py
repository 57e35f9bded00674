"""Run history, `billing runs`, `billing status --check`, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from billing_cli.jobs.status import Thresholds, job_statuses
from tests.conftest import BILLING, billing_subprocess_env
from tests.data import SELLER_ENV
from tests.test_json_output import assert_valid

runner = CliRunner()


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def test_every_run_is_recorded_with_its_outcome(clean_env, billed, engine) -> None:
    assert run("aggregate-hourly", "--hour", "2024-01-31T13", DATABASE_URL=billed).exit_code == 0
    assert run("invoice-monthly", "--month", "2024-01", "--dry-run", DATABASE_URL=billed).exit_code == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET price_plan_id = NULL WHERE id = 'org-1'"))
    assert run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed).exit_code == ExitCode.PARTIAL

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job, period, dry_run, status, counts, errors, revenue, failed, host, "
                                 "version, finished_at IS NOT NULL AS finished FROM job_runs ORDER BY id")).all()
    assert [(r.job, r.dry_run, r.status) for r in rows] == [
        ("aggregate-hourly", False, "succeeded"), ("invoice-monthly", True, "succeeded"),
        ("invoice-monthly", False, "partial")]
    last = rows[-1]
    assert last.period == "2024-01" and last.finished and last.host and last.version == "0.1.0"
    assert last.counts["invoiced"] == 2 and last.counts["failed"] == 1 and last.errors["data"] == 1
    assert last.revenue == {"EUR": "1.23", "USD": "27.50"}
    assert last.failed[0]["organization_id"] == "org-1"

    listing = run("runs", "--json", "--job", "invoice-monthly", DATABASE_URL=billed)
    history = json.loads(listing.output)
    assert [(h["status"], h["dry_run"]) for h in history] == [("partial", False), ("succeeded", True)]
    plain = run("runs", "--plain", DATABASE_URL=billed)
    assert "run id=" in plain.output and "status=\"succeeded (dry run)\"" in plain.output
    assert run("runs", "--job", "nope", DATABASE_URL=billed).exit_code == ExitCode.USAGE


def test_status_check(clean_env, billed, engine) -> None:
    first = run("status", "--check", "--json", DATABASE_URL=billed)
    assert first.exit_code == ExitCode.UNHEALTHY
    report = {s["job"]: s for s in json.loads(first.output)}
    assert report["aggregate-hourly"]["problems"] == ["never succeeded"]

    assert run("aggregate-hourly", "--hour", "2024-01-31T13", DATABASE_URL=billed).exit_code == 0
    with engine.connect() as conn:
        now = datetime.now(UTC)
        statuses = {s.job: s for s in job_statuses(conn, now)}
        assert statuses["aggregate-hourly"].problems == []
        late = {s.job: s for s in job_statuses(conn, now + timedelta(hours=3))}
        assert late["aggregate-hourly"].problems[0].startswith("last success 3 h 0 min ago, more than 2 h"), \
            (late["aggregate-hourly"].problems, late["aggregate-hourly"].last_success)
        # January's periods (calendar months here) ended on 1 February: not invoiced, 4 days later
        february = {s.job: s for s in job_statuses(conn, datetime(2024, 2, 5, tzinfo=UTC), Thresholds(
            aggregate_max_age=timedelta(days=10000)))}
        assert february["invoice-monthly"].problems == [
            "the billing periods that ended at 2024-02-01 00:00Z (starting in 2024-01) are not invoiced "
            "successfully yet, 96 h 0 min later (grace: 24 h)"]
        within_grace = {s.job: s for s in job_statuses(conn, datetime(2024, 2, 1, 12, tzinfo=UTC), Thresholds(
            aggregate_max_age=timedelta(days=10000)))}["invoice-monthly"].problems
        assert "(starting in 2024-01)" not in " ".join(within_grace)  # 12 h after January ended: not yet due

    assert run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed).exit_code == 0
    with engine.connect() as conn:
        february = {s.job: s for s in job_statuses(conn, datetime(2024, 2, 5, tzinfo=UTC), Thresholds(
            aggregate_max_age=timedelta(days=10000)))}
        assert february["invoice-monthly"].problems == []
        conn.execute(text("INSERT INTO job_runs (job, period, dry_run, status, started_at, host, version) "
                          "VALUES ('aggregate-hourly', 'x', false, 'running', now() - interval '7 hours', 'h', 'v')"))
        stuck = {s.job: s for s in job_statuses(conn, datetime.now(UTC))}
        assert "stuck, or the process died" in stuck["aggregate-hourly"].problems[0]
        conn.rollback()

    healthy_env = {"DATABASE_URL": billed, "STATUS_INVOICE_GRACE_HOURS": "720"}
    table = run("status", "--plain", **healthy_env)
    assert "status job=aggregate-hourly" in table.output and 'health=ok' in table.output


def test_sigterm_finishes_in_flight_work_records_interrupted_and_the_rerun_completes(
        clean_env, billed, engine, fake_stripe, s3, mail, tmp_path) -> None:
    fake_stripe.latency = 0.5  # each organization takes a few seconds: time to stop in the middle
    env = billing_subprocess_env(
        DATABASE_URL=billed, BILLING_ENV_FILE="/dev/null", INVOICE_CONCURRENCY="1",
        INVOICE_ENABLE_STRIPE="true", STRIPE_API_KEY="sk_test_SIGTERMsecret01", STRIPE_API_BASE=fake_stripe.base_url,
        **SELLER_ENV)
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first organization is done, the second in flight
        if line.startswith("organization "):
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)

    assert proc.returncode == ExitCode.INTERRUPTED, (rest, err)
    assert "SIGTERM received: finishing the work in flight" in err and "rerun the same command" in err
    with engine.connect() as conn:
        status, counts = conn.execute(text("SELECT status, counts FROM job_runs")).one()
        stripe_done = conn.execute(text("SELECT count(*) FROM invoices WHERE stripe_status = 'sent'")).scalar_one()
        issued = conn.execute(text("SELECT count(*) FROM invoices")).scalar_one()
    assert status == "interrupted" and 1 <= counts["processed"] < 3
    assert stripe_done == issued == counts["processed"]  # what was in flight finished its steps

    fake_stripe.latency = 0
    rerun = subprocess.run([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices WHERE stripe_status = 'sent'")).scalar_one() == 3
    assert len(fake_stripe.invoices) == 3


def test_a_run_killed_with_sigkill_does_not_keep_status_check_failing_after_the_rerun_succeeded(
        clean_env, billed, engine, fake_stripe, tmp_path) -> None:
    # Kubernetes sends SIGKILL 30 s after SIGTERM (activeDeadlineSeconds, a slow peer), and the OOM
    # killer sends it straight away. The docs promise the rerun completes the month: it does, but
    # the killed run's row stayed `running`, and `status --check` reported it as stuck for ever.
    fake_stripe.latency = 0.5
    env = billing_subprocess_env(
        DATABASE_URL=billed, BILLING_ENV_FILE="/dev/null", INVOICE_CONCURRENCY="1",
        INVOICE_ENABLE_STRIPE="true", STRIPE_API_KEY="sk_test_SIGKILLsecret01", STRIPE_API_BASE=fake_stripe.base_url,
        **SELLER_ENV)
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("organization "):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    later = datetime.now(UTC) + timedelta(hours=7)  # past STATUS_STUCK_AFTER_HOURS (6)

    # Before any rerun: the killed run is known dead (its session went with it), not stuck.
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connection within moments
        with engine.connect() as conn:
            killed = {s.job: s for s in job_statuses(conn, later, Thresholds())}["invoice-monthly"]
        if any("died without recording how it ended" in p for p in killed.problems) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("last run (2024-01) died without recording how it ended" in p for p in killed.problems), killed.problems
    assert not [p for p in killed.problems if "running since" in p]

    fake_stripe.latency = 0
    rerun = subprocess.run([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)
    assert rerun.returncode == 0, rerun.stderr

    with engine.connect() as conn:
        statuses = {s.job: s for s in job_statuses(conn, later, Thresholds())}
        runs = conn.execute(text("SELECT status, message FROM job_runs ORDER BY id")).all()
    assert not [p for p in statuses["invoice-monthly"].problems if "running since" in p or "died" in p]
    assert [status for status, _ in runs] == ["abandoned", "succeeded"]
    assert "killed: SIGKILL" in runs[0].message
    history = run("runs", "--json", DATABASE_URL=billed)
    assert_valid("runs", json.loads(history.stdout))  # `abandoned` is in its schema


def test_metrics_are_pushed_to_a_real_pushgateway(clean_env, billed, engine) -> None:
    import re

    from tests.peers.pushgateway import Pushgateway

    gateway = Pushgateway().start()
    try:
        env = {"DATABASE_URL": billed, "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
        with engine.begin() as conn:
            conn.execute(text("UPDATE organizations SET price_plan_id = NULL WHERE id = 'org-1'"))
        assert run("invoice-monthly", "--month", "2024-01", **env).exit_code == ExitCode.PARTIAL
        partial = gateway.metrics()
        labels = 'instance="",job="billing-invoice-monthly",shard="all"'
        assert f"billing_organizations_processed{{{labels}}} 3" in partial
        assert f"billing_organizations_failed{{{labels}}} 1" in partial
        assert f'billing_errors{{component="data",{labels}}} 1' in partial
        assert f'billing_revenue{{currency="USD",{labels}}} 27.5' in partial
        assert f"billing_last_run_success{{{labels}}} 0" in partial
        assert "billing_last_success_timestamp_seconds{" not in partial  # never succeeded yet

        with engine.begin() as conn:
            conn.execute(text("UPDATE organizations SET price_plan_id = 'pro' WHERE id = 'org-1'"))
        assert run("invoice-monthly", "--month", "2024-01", **env).exit_code == 0
        ok = gateway.metrics()
        stamp = re.search(rf"billing_last_success_timestamp_seconds{{{labels}}} (\S+)", ok)
        assert stamp and abs(float(stamp.group(1)) - datetime.now(UTC).timestamp()) < 120
        assert f"billing_last_run_success{{{labels}}} 1" in ok

        assert run("invoice-monthly", "--month", "2024-01", **{**env, "DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}
                   ).exit_code == ExitCode.DATABASE_UNAVAILABLE
        after_failure = gateway.metrics()
        assert f"billing_last_run_success{{{labels}}} 0" in after_failure
        assert stamp.group(0) in after_failure  # pushadd kept the last success of the earlier run

        assert run("aggregate-hourly", "--hour", "2024-01-31T13", **env).exit_code == 0
        assert 'billing_last_run_success{instance="",job="billing-aggregate-hourly",shard="all"} 1' in gateway.metrics()

        # This month's roll-ups were written without their events: reconcile says so, and pushes it.
        assert run("reconcile", "--month", "2024-01", **env).exit_code == ExitCode.MISMATCH
        reconciled = gateway.metrics()
        job = 'instance="",job="billing-reconcile"'
        assert f'billing_reconcile_differences{{{job},kind="any",month="2024-01",shard="all"}} 3' in reconciled
        assert f'billing_reconcile_differences{{{job},kind="rollup_behind",month="2024-01",shard="all"}} 3' in reconciled
        assert f'billing_last_run_success{{{job},month="2024-01",shard="all"}} 0' in reconciled
    finally:
        gateway.stop()

    unreachable = run("aggregate-hourly", "--hour", "2024-01-31T13", DATABASE_URL=billed,
                      PROMETHEUS_PUSHGATEWAY_URL="http://127.0.0.1:1")
    assert unreachable.exit_code == 0 and "metrics push to http://127.0.0.1:1 failed" in unreachable.output


def test_json_lines_carry_job_and_run_id_and_the_json_summary_goes_to_stdout(clean_env, billed, engine) -> None:
    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--json"],
                           env={"DATABASE_URL": billed, "LOG_FORMAT": "json"})
    assert result.exit_code == 0
    summary = json.loads(result.stdout)  # stdout holds exactly one JSON document
    assert summary["counts"]["invoiced"] == 3 and summary["revenue"] == {"EUR": "1.23", "USD": "38.50"}
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    with engine.connect() as conn:
        run_id = conn.execute(text("SELECT id FROM job_runs")).scalar_one()
    orgs = [line for line in lines if line["event"] == "organization"]
    assert {line["organization_id"] for line in orgs} == {"org-1", "org-2", "org-3"}
    assert all(line["job"] == "invoice-monthly" and line["run_id"] == run_id and line["level"] == "info"
               and line["time"].endswith("Z") for line in orgs)
    assert {line["status"] for line in orgs} == {"invoiced"}


def test_auto_format_is_json_without_a_terminal(clean_env, billed, monkeypatch) -> None:
    monkeypatch.delenv("LOG_FORMAT")
    result = runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-31T13"], env={"DATABASE_URL": billed})
    first = json.loads(result.stdout.splitlines()[0])
    assert first["event"] == "start" and first["job"] == "aggregate-hourly" and "run_id" in first
    quiet = runner.invoke(app, ["--log-format", "plain", "aggregate-hourly", "--hour", "2024-01-31T13"],
                          env={"DATABASE_URL": billed, "LOG_LEVEL": "warning"})
    assert "hour hour=" not in quiet.stdout and quiet.stdout.startswith("start job=aggregate-hourly")


def test_a_run_limited_to_some_organizations_never_makes_a_failed_month_look_healthy(clean_env, billed, engine) -> None:
    from tests.peers.pushgateway import Pushgateway

    gateway = Pushgateway().start()
    try:
        env = {"DATABASE_URL": billed, "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
        with engine.begin() as conn:
            conn.execute(text("UPDATE organizations SET price_plan_id = NULL WHERE id = 'org-1'"))
        assert run("invoice-monthly", "--month", "2024-01", **env).exit_code == ExitCode.PARTIAL
        assert run("invoice-monthly", "--month", "2024-01", "--org", "org-2", **env).exit_code == 0

        monthly = {s.job: s for s in job_statuses(engine.connect(), datetime(2024, 2, 3, tzinfo=UTC))}
        metrics = gateway.metrics()
    finally:
        gateway.stop()
    problems = monthly["invoice-monthly"].problems
    assert problems[0].startswith("last run (2024-01) partial")
    assert ("the billing periods that ended at 2024-02-01 00:00Z (starting in 2024-01) are not invoiced "
            "successfully yet, 48 h 0 min later (grace: 24 h)") in problems
    whole = 'instance="",job="billing-invoice-monthly",shard="all"'
    assert f"billing_last_run_success{{{whole}}} 0" in metrics  # the --org run did not overwrite it
    assert 'billing_last_run_success{instance="",job="billing-invoice-monthly",shard="targeted"} 1' in metrics
    listing = run("runs", "--plain", DATABASE_URL=billed)
    assert 'status="succeeded (--org)"' in listing.output


def test_ctrl_c_in_a_terminal_finishes_the_work_in_flight_and_prints_the_summary(
        clean_env, billed, engine, fake_stripe, tmp_path) -> None:
    """Ctrl-C in a real pseudo-terminal reaches the whole process group, the PDF worker processes
    included (a run of 200+ organizations renders in them): they ignore it, and the run stops
    as SIGTERM makes it stop: exit 9, the summary, no traceback, nothing half done."""
    import os
    import pty
    import select
    import time

    from billing_cli.jobs.invoicing.month import RENDER_POOL_THRESHOLD

    extra = RENDER_POOL_THRESHOLD + 10
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO organizations (id, name, email, status, currency, created_at, price_plan_id)
            SELECT 'bulk-' || lpad(n::text, 4, '0'), 'Bulk ' || n, 'bulk-' || n || '@example.com', 'active', 'USD',
                   '2023-01-01', 'pro' FROM generate_series(1, :n) AS n"""), {"n": extra})
        conn.execute(text("""
            INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count)
            SELECT id, 'api_calls', '2024-01-15 10:00+00', 1500, 1 FROM organizations WHERE id LIKE 'bulk-%'"""))
    fake_stripe.latency = 0.02  # Stripe calls in flight when the key is pressed
    env = billing_subprocess_env(
        DATABASE_URL=billed, BILLING_ENV_FILE="/dev/null", INVOICE_CONCURRENCY="4", PDF_RENDER_PROCESSES="2",
        INVOICE_ENABLE_STRIPE="true", STRIPE_API_KEY="sk_test_CTRLCsecret0001", STRIPE_API_BASE=fake_stripe.base_url,
        **SELLER_ENV,
        LOG_FORMAT="auto", COLUMNS="120", TERM="xterm")

    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session of its own on the pseudo-terminal, as in a shell
        os.chdir(tmp_path)
        os.execvpe(BILLING[0], [*BILLING, "invoice-monthly", "--month", "2024-01"], env)

    screen = bytearray()

    def read(until: float) -> None:
        while time.monotonic() < until:
            ready, _, _ = select.select([terminal], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                screen.extend(chunk)

    started = time.monotonic()
    while True:  # wait until some organizations are done (and their PDFs rendered in the pool)
        read(time.monotonic() + 0.2)
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM invoices WHERE stripe_status = 'sent'")).scalar_one() >= 10:
                break
        assert time.monotonic() - started < 60, screen.decode(errors="replace")
    os.write(terminal, b"\x03")  # Ctrl-C, as typed: the terminal signals the foreground process group
    read(time.monotonic() + 60)
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    output = screen.decode(errors="replace")

    assert os.waitstatus_to_exitcode(status) == ExitCode.INTERRUPTED, output
    assert "SIGINT received: finishing the work in flight" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output and "worker process died" not in output
    assert "rerun the same command" in output and "Revenue" in output  # the summary was printed
    with engine.connect() as conn:
        run_status, counts = conn.execute(text("SELECT status, counts FROM job_runs")).one()
        issued = conn.execute(text("SELECT count(*) FROM invoices")).scalar_one()
        sent = conn.execute(text("SELECT count(*) FROM invoices WHERE stripe_status = 'sent' "
                                 "AND pdf_sha256 IS NOT NULL")).scalar_one()
    assert run_status == "interrupted" and counts["failed"] == 0
    assert 10 <= issued == sent == counts["processed"] < extra + 3  # what was in flight finished its steps


def test_a_lock_timeout_mid_run_is_said_as_it_is_not_as_an_unreachable_database(clean_env, billed, engine) -> None:
    # A DBA's lock_timeout (or statement_timeout, a deadlock) is an OperationalError too; the run said
    # "cannot reach PostgreSQL at …: ^" (the last line of the server's message is the caret under the
    # SQL) and "check that the server is up". Found by review.
    from sqlalchemy import make_url

    database = make_url(billed).database
    with engine.connect() as admin:
        admin.execute(text(f'ALTER DATABASE "{database}" SET lock_timeout = \'300ms\''))
        admin.commit()
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE"))  # e.g. a long report or migration
        result = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed)
        holder.rollback()
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE, result.output
    assert "cannot reach PostgreSQL" not in result.output and ": ^" not in result.output, result.output
    assert "stopped a statement of this run: it waited longer than lock_timeout for a lock another session held " \
           "(canceling statement due to lock timeout)" in " ".join(result.output.split()), result.output


def test_a_second_ctrl_c_under_json_still_prints_the_run_summary(clean_env, billed, engine, fake_stripe) -> None:
    """Ctrl-C twice (stop at once) during `invoice-monthly --json`: exit 130 and, on stdout, the run's
    summary (outcome interrupted), like any run that stopped; before, stdout stayed empty, and a
    wrapper reading the document (jq) read nothing."""
    import os

    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO organizations (id, name, email, status, currency, created_at, price_plan_id)
            SELECT 'bulk-' || lpad(n::text, 4, '0'), 'Bulk ' || n, 'bulk-' || n || '@example.com', 'active', 'USD',
                   '2023-01-01', 'pro' FROM generate_series(1, 60) AS n"""))
        conn.execute(text("""
            INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count)
            SELECT id, 'api_calls', '2024-01-15 10:00+00', 1500, 1 FROM organizations WHERE id LIKE 'bulk-%'"""))
    fake_stripe.latency = 0.2  # Stripe calls in flight when the keys are pressed
    env = billing_subprocess_env(
        DATABASE_URL=billed, BILLING_ENV_FILE="/dev/null", INVOICE_CONCURRENCY="2", INVOICE_ENABLE_STRIPE="true",
        STRIPE_API_KEY="sk_test_CTRLCsecret0002", STRIPE_API_BASE=fake_stripe.base_url, **SELLER_ENV)
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while True:
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM invoices WHERE stripe_status = 'sent'")).scalar_one() >= 2:
                break
        assert time.monotonic() - started < 60 and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "CTRLCsecret" not in stdout + stderr
    document = json.loads(stdout)
    assert_valid("invoice-monthly", document)
    assert document["outcome"] == "interrupted" and document["message"] == "interrupted by a signal"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM job_runs")).scalar_one() == "interrupted"
