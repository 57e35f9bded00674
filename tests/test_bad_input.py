"""Every bad input an operator or a neighbouring service can produce, against the real database and
peers: a clear message, the documented exit code, and nothing lost or doubled."""

from __future__ import annotations

import subprocess
from decimal import Decimal as D

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.conftest import BILLING, billing_subprocess_env
from tests.data import SELLER_ENV, add_event, add_org, add_usage, set_plan, utc

runner = CliRunner()
UNREACHABLE = "postgresql://billing:db-SECRET-pw@127.0.0.1:1/billing"


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def issued(engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT organization_id, number FROM invoices WHERE status = 'issued' ORDER BY number"))]


@pytest.mark.parametrize("args,env,code,message", [
    (["invoice-monthly", "--month", "2024-1"], {}, ExitCode.USAGE, "--month '2024-1' is not a month"),
    (["invoice-monthly", "--month", "2999-12"], {}, ExitCode.USAGE, "is in the future"),
    (["aggregate-hourly", "--hour", "2024-01-31T24"], {}, ExitCode.USAGE, "--hour '2024-01-31T24' is not"),
    (["aggregate-hourly", "--from", "2024-02-01T00", "--to", "2024-01-01T00"], {}, ExitCode.USAGE, "is after --to"),
    # The scheduled run's --lookback (no --hour): a negative one is refused too, not run as no lookback at all.
    (["aggregate-hourly", "--lookback", "-1"], {}, ExitCode.USAGE, "--lookback must be 0 or more hours"),
    (["legacy-run"], {"RUN_SCHEDULE": "0 0 0 1 13 *"}, ExitCode.CONFIG, "RUN_SCHEDULE='0 0 0 1 13 *'"),
    (["legacy-run"], {"RUN_SCHEDULE": "15 0 0 1 * *"}, ExitCode.CONFIG, "the seconds field must be 0"),
    (["invoice-monthly"], {"DRY_RUN": "maybe"}, ExitCode.CONFIG, "DRY_RUN='maybe': not a boolean"),
    (["invoice-monthly"], {"INVOICE_ENABLE_EMAIL": "yes"}, ExitCode.CONFIG,
     "INVOICE_ENABLE_EMAIL is on but INVOICE_SMTP_HOST is not set"),
    (["invoice-monthly"], {"INVOICE_ENABLE_STRIPE": "1", "STRIPE_API_KEY": "pk_live_123456789"}, ExitCode.CONFIG,
     "not a Stripe secret key"),
    (["aggregate-hourly"], {"DATABASE_URL": UNREACHABLE}, ExitCode.DATABASE_UNAVAILABLE,
     "cannot reach PostgreSQL at 127.0.0.1:1/billing"),
    (["invoice-monthly", "--month", "0000-01", "--dry-run"], {}, ExitCode.USAGE,
     "--month '0000-01' is out of range: use a year from 1900 to 9998"),
    (["invoice-monthly", "--org", "org-1,org-2"], {}, ExitCode.USAGE,
     "--org 'org-1,org-2' holds a comma: give each organization its own --org (--org org-1 --org org-2)"),
    (["runs"], {"DATABASE_URL": "postgresql://nosuch-role-x:db-SECRET-pw@127.0.0.1:5432/test"}, ExitCode.CONFIG,
     'refused the login: FATAL:  role "nosuch-role-x" does not exist'),
    (["runs"], {"DATABASE_URL": "postgresql://root@127.0.0.1:5432/no_such_database_x"}, ExitCode.CONFIG,
     'refused the login: FATAL:  database "no_such_database_x" does not exist'),
    (["config"], {"DATABASE_URL": "postgresql://u@db/x?sslmode=require&password=db-SECRET-pw",
                  "NOTIFY_WEBHOOK_URL": "https://db-SECRET-pw@hooks.example.com/x?token=db-SECRET-pw"},
     ExitCode.CONFIG, "NOTIFY_WEBHOOK_URL is set but NOTIFY_WEBHOOK_SECRET is not"),
])
def test_bad_flags_settings_and_servers(clean_env, args, env, code, message) -> None:
    result = run(*args, **{"DATABASE_URL": UNREACHABLE, **env})
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output and "db-SECRET-pw" not in result.output
    assert len([line for line in result.output.strip().splitlines() if line.startswith("error")]) == 1  # one line


def test_broken_organizations_fail_alone_and_nothing_is_doubled(clean_env, billed, engine) -> None:
    with engine.begin() as conn:
        for org_id, email, name, currency, plan in (
                ("bad-email", "not an address", "Bad E-mail Ltd", "USD", "pro"),
                ("bad-name", "ok@example.com", "Evil\r\nBcc: x@y.z", "USD", "pro"),
                ("no-plan", "ok@example.com", "No Plan", "USD", None),
                ("wrong-currency", "ok@example.com", "Wrong Currency", "GBP", "pro"),
                ("huge", "ok@example.com", "Huge Usage", "USD", "pro")):
            add_org(conn, org_id, email=email, name=name, currency=currency)
            conn.execute(text("UPDATE organizations SET price_plan_id = :p WHERE id = :o"), {"p": plan, "o": org_id})
            add_usage(conn, org_id, "api_calls", "10")
        add_usage(conn, "huge", "api_calls", "9" * 75, utc(2024, 1, 2, 3))  # absurdly large

    first = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed)

    assert first.exit_code == ExitCode.PARTIAL
    for org_id, message in (("bad-email", "organization e-mail 'not an address' is not a valid e-mail address"),
                            ("bad-name", "organization name contains control characters"),
                            ("no-plan", "no price plan"),
                            ("wrong-currency", "organization currency GBP does not match plan 'pro' currency USD"),
                            ("huge", "too large to be priced exactly")):
        line = next(line for line in first.output.splitlines() if line.startswith(f"organization id={org_id} "))
        assert "status=failed" in line and message in line, line
    assert "invoiced=3" in first.output and "failed=5" in first.output
    before = issued(engine)
    assert sorted(org for org, _ in before) == ["org-1", "org-2", "org-3"]

    again = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed)
    assert again.exit_code == ExitCode.PARTIAL and issued(engine) == before  # nothing doubled


def test_events_of_unknown_or_inactive_organizations_and_duplicate_keys(clean_env, billed, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "gone", status="inactive")
        add_event(conn, "gone", "api_calls", "5", utc(2024, 1, 31, 13, 5))
        add_event(conn, "nobody", "api_calls", "7", utc(2024, 1, 31, 13, 6))
        add_event(conn, "org-1", "api_calls", "1", utc(2024, 1, 31, 13, 7), key="evt-1")
    # A producer's retry: the same event (key and time), refused by the partitions' unique index.
    with pytest.raises(IntegrityError, match=r"Key \(organization_id, idempotency_key, occurred_at\)"), \
            engine.begin() as conn:
        add_event(conn, "org-1", "api_calls", "1", utc(2024, 1, 31, 13, 7), key="evt-1")

    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--lookback", "0", DATABASE_URL=billed)

    assert result.exit_code == 0
    # Every event is rolled up; the one whose organization has no row is orphan usage, and says so.
    assert "organizations=3 events=3 inserted=3" in result.output and "orphan_events=1" in result.output
    assert "1 events of 1 organization id(s) with no organizations row (orphan usage: nobody)" in result.output
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, quantity FROM usage_hourly "
                                 "WHERE hour_start = '2024-01-31T13:00Z' ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [("gone", D("5")), ("nobody", D("7")), ("org-1", D("1"))]


def test_database_restarted_mid_run_stops_with_4_and_the_rerun_completes(billed, engine, fake_stripe,
                                                                         tmp_path) -> None:
    fake_stripe.latency = 0.4
    env = billing_subprocess_env(DATABASE_URL=billed, BILLING_ENV_FILE="/dev/null", INVOICE_CONCURRENCY="1",
                                 INVOICE_ENABLE_STRIPE="true", STRIPE_API_KEY="sk_test_RESTARTsecret1",
                                 STRIPE_API_BASE=fake_stripe.base_url, **SELLER_ENV)
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("organization "):
            break
    database = engine.url.database
    with engine.connect() as conn:  # what a restart does to the run: every connection is cut
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})
    rest, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # it had finished before the cut: nothing to prove this time
        pytest.skip("the run finished before the connections were cut")
    assert proc.returncode == ExitCode.DATABASE_UNAVAILABLE, err
    assert "cannot reach PostgreSQL" in err and "Traceback" not in err

    fake_stripe.latency = 0
    rerun = subprocess.run([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(issued(engine)) == 3 and len(fake_stripe.invoices) == 3


def test_an_organization_id_that_is_not_there_stops_the_run_before_any_work(clean_env, billed, engine) -> None:
    result = run("invoice-monthly", "--month", "2024-01", "--org", "org-1", "--org", "org-nosuch",
                 DATABASE_URL=billed)

    assert result.exit_code == ExitCode.USAGE
    assert "--org org-nosuch: no organization with this id; check the id (nothing was done)" in result.output
    assert issued(engine) == []  # not even org-1


def test_an_organization_id_that_would_break_an_email_header_is_refused_before_issuing(
        clean_env, billed, engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme\u2028Bcc: x@evil.example", email="billing@acme.example", name="Acme")
        set_plan(conn, "acme\u2028Bcc: x@evil.example", "pro")
        add_usage(conn, "acme\u2028Bcc: x@evil.example", "api_calls", "5")

    result = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed)

    assert result.exit_code == ExitCode.PARTIAL
    assert "organization id contains control characters or line breaks" in result.output
    assert len([line for line in result.output.splitlines() if "acme" in line]) == 1  # one log line, not two
    assert sorted(org for org, _ in issued(engine)) == ["org-1", "org-2", "org-3"]


def test_the_message_id_is_well_formed_whatever_the_organization_id() -> None:
    from datetime import date
    from decimal import Decimal

    from billing_cli.delivery.invoice_email import message_id
    from billing_cli.invoices import InvoiceDocument
    from billing_cli.periods import Month

    doc = InvoiceDocument("INV-2024-01-000001", "org 7\u0085x", "A", "a@b.example", Month(2024, 1),
                          date(2024, 2, 1), date(2024, 3, 2), "USD", (), Decimal(0))
    assert message_id(doc, "billing@example.cloud") == "<INV-2024-01-000001.x6f72672037c28578@example.cloud>"


@pytest.mark.parametrize("args,option", [
    (["invoice-monthly", "--month", "2024-01", "--dry-run", "--org", b"org-\xff"], "--org"),
    (["reconcile", "--month", "2024-01", "--org", b"org-\xe9"], "--org"),
    (["invoices", "void", "INV-2024-01-000001", "--yes", "--reason", b"Factur\xe9 deux fois"], "--reason"),
])
def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(clean_env, db_url, engine, args,
                                                                        option) -> None:
    """A value typed in a Latin-1 terminal or pasted from a file in another encoding: one line naming
    the option (exit 2), nothing recorded; before, PostgreSQL refused the run's job_runs row and the
    operator got a traceback (exit 1)."""
    proc = subprocess.run([*BILLING, *args], capture_output=True, env=billing_subprocess_env(DATABASE_URL=db_url),
                          timeout=120)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == ExitCode.USAGE, stderr
    assert f"error: {option} " in stderr and "is not UTF-8 text" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_runs")).scalar() == 0


@pytest.mark.parametrize("flag", [True, False])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_invoice(clean_env, billed, engine,
                                                                               flag) -> None:
    """--output-dir (or INVOICE_OUTPUT_DIR) naming a file: one line naming it, exit 2 (3 for the setting),
    nothing issued; before, every organization was invoiced and then failed its PDF ("cannot write …:
    Not a directory"), exit 6 advising a rerun that fails the same way."""
    (clean_env / "invoices").write_text("not a folder")
    args, env = (["--output-dir", "invoices/out"], {}) if flag else ([], {"INVOICE_OUTPUT_DIR": "invoices/out"})
    result = run("invoice-monthly", "--month", "2024-01", *args, DATABASE_URL=billed, **env)

    assert result.exit_code == (ExitCode.USAGE if flag else ExitCode.CONFIG), result.output
    name = "--output-dir " if flag else "INVOICE_OUTPUT_DIR="
    assert f"{name}'invoices/out': invoices is a file, not a folder" in result.output, result.output
    assert issued(engine) == []
