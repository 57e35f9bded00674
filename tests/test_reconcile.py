"""`billing reconcile`: clean when events, roll-ups, invoices, Stripe, S3 and e-mail agree; exit 11
with the difference named for each kind of disagreement; exit 12 when a service cannot be asked."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.db.plan_store import save_plans
from billing_cli.errors import ExitCode
from billing_cli.periods import Month, utc_now
from billing_cli.plan_file import parse_plans
from tests.data import PLANS, add_event, add_org, add_usage, set_plan, utc
from tests.peers.fixtures import peer_env

runner = CliRunner()


@pytest.fixture
def invoiced(db_url, engine, tmp_path, clean_env, s3, mail, fake_stripe):
    """Two organizations with January events, rolled up, invoiced and delivered everywhere."""
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    env = peer_env(db_url, s3, mail, fake_stripe, INVOICE_CONCURRENCY="1")  # numbers in id order
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=env).exit_code == 0
    with engine.begin() as conn:
        for org, plan, currency in (("acme", "pro", "USD"), ("gmbh", "euro", "EUR")):
            add_org(conn, org, currency=currency)
            set_plan(conn, org, plan)
            for n in range(3):
                add_event(conn, org, "api_calls", "100", utc(2024, 1, 10 + n, 9), key=f"{org}-{n}")
    assert runner.invoke(app, ["aggregate-hourly", "--from", "2024-01-10T09", "--to", "2024-01-12T09"],
                         env=env).exit_code == 0
    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env)
    assert result.exit_code == 0, result.output
    return env


def reconcile(env, *args: str):
    result = runner.invoke(app, ["reconcile", "--month", "2024-01", "--json", *args], env=env)
    assert result.stdout.startswith("{"), (result.exit_code, result.output, result.exception)
    return result, json.loads(result.stdout)


def kinds(report) -> list[tuple[str, str, str]]:
    return [(d["kind"], d["organization_id"], d["subject"]) for d in report["differences"]]


def test_a_month_billed_exactly_once_reconciles_clean(invoiced, engine) -> None:
    result, report = reconcile(invoiced)

    assert result.exit_code == 0, result.output
    assert report["outcome"] == "succeeded" and report["differences"] == []
    assert report["counts"]["invoices"] == 2 and report["counts"]["stripe_invoices"] == 2
    assert report["counts"]["s3_objects"] == 2
    with engine.connect() as conn:  # read-only: the check wrote nothing but its run record
        assert conn.execute(text("SELECT status FROM job_runs WHERE job = 'reconcile'")).scalar_one() == "succeeded"


def test_an_edited_invoice_line_is_a_difference(invoiced, engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoice_lines SET amount = amount + 1 WHERE line_no = 1 AND invoice_id = "
                          "(SELECT id FROM invoices WHERE organization_id = 'acme')"))

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    # The lines no longer add up to the total, and no longer match the Stripe invoice's lines.
    assert kinds(report) == [("invoice_total", "acme", "INV-2024-01-000001"),
                             ("stripe_lines", "acme", "INV-2024-01-000001")]


def test_an_invoice_line_edited_to_an_amount_stripe_cannot_charge_is_a_difference_not_a_crash(invoiced, engine) -> None:
    with engine.begin() as conn:  # a tenth of a cent: no Stripe amount is that
        conn.execute(text("UPDATE invoice_lines SET amount = amount + 0.001 WHERE line_no = 1 AND invoice_id = "
                          "(SELECT id FROM invoices WHERE organization_id = 'acme')"))

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH, result.output
    assert kinds(report) == [("invoice_total", "acme", "INV-2024-01-000001"),
                             ("stripe_lines", "acme", "INV-2024-01-000001")]


def test_with_stripe_and_s3_off_the_database_alone_checks_every_invoice(invoiced, engine) -> None:
    # Nothing to ask outside the database: the invoices are compared there, and only those that do
    # not add up (or, with e-mail on, were not sent) come back; all of them are counted as checked.
    database_only = {**invoiced, "INVOICE_ENABLE_STRIPE": "false", "INVOICE_ENABLE_S3": "false"}
    result, report = reconcile(database_only)
    assert result.exit_code == 0 and report["differences"] == [] and report["counts"]["invoices"] == 2

    with engine.begin() as conn:
        conn.execute(text("UPDATE invoice_lines SET amount = amount + 1 WHERE line_no = 1 AND invoice_id = "
                          "(SELECT id FROM invoices WHERE organization_id = 'gmbh')"))
        conn.execute(text("UPDATE invoices SET emailed_at = NULL WHERE organization_id = 'acme'"))

    result, report = reconcile(database_only)
    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("email_not_sent", "acme", "INV-2024-01-000001"),
                             ("invoice_total", "gmbh", "INV-2024-01-000002")]
    assert report["counts"]["invoices"] == 2

    result, report = reconcile({**database_only, "INVOICE_ENABLE_EMAIL": "false"})
    assert kinds(report) == [("invoice_total", "gmbh", "INV-2024-01-000002")]
    assert report["differences"][0]["ours"] == "total 30.00"  # what the invoice says
    assert report["differences"][0]["found"] == "lines add up to 31.00, taxes to 0"
    assert report["counts"]["invoices"] == 2


def test_a_deleted_s3_object_is_a_difference(invoiced, engine, s3) -> None:
    with engine.connect() as conn:
        key = conn.execute(text("SELECT s3_key FROM invoices WHERE organization_id = 'gmbh'")).scalar_one()
    s3.client().delete_object(Bucket=s3.bucket, Key=key)

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("s3_missing", "gmbh", "INV-2024-01-000002")]
    assert report["differences"][0]["found"] == "no such object"


def test_a_credit_note_pdf_deleted_or_replaced_in_s3_is_a_difference(invoiced, engine, s3) -> None:
    voided = runner.invoke(app, ["invoices", "void", "INV-2024-01-000002", "--reason", "Wrong account", "--yes"],
                           env=invoiced)
    assert voided.exit_code == 0, voided.output  # its credit note CN-2024-01-000001 is delivered, S3 included
    with engine.connect() as conn:
        key = conn.execute(text("SELECT s3_key FROM credit_notes WHERE number = 'CN-2024-01-000001'")).scalar_one()
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"%PDF-1.7 not our credit note")

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert ("s3_checksum", "gmbh", "CN-2024-01-000001") in kinds(report)
    assert report["counts"]["s3_objects"] == 2  # acme's invoice and gmbh's credit note

    s3.client().delete_object(Bucket=s3.bucket, Key=key)
    result, report = reconcile(invoiced)
    assert ("s3_missing", "gmbh", "CN-2024-01-000001") in kinds(report)


def test_a_void_invoice_that_stripe_still_charges_is_a_difference(invoiced, engine, fake_stripe) -> None:
    import stripe

    from tests.peers.fixtures import STRIPE_KEY

    with engine.connect() as conn:
        stripe_id = conn.execute(text("SELECT stripe_invoice_id FROM invoices WHERE organization_id = 'gmbh'"
                                      )).scalar_one()
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.base_url})
    client.v1.invoices.pay(stripe_id, {"paid_out_of_band": True})
    voided = runner.invoke(app, ["invoices", "void", "INV-2024-01-000002", "--reason", "Wrong account", "--yes"],
                           env=invoiced)
    assert voided.exit_code == 0, voided.output  # paid: Stripe credits it in full (a Stripe credit note)
    result, report = reconcile(invoiced)
    assert kinds(report) == [("unbilled_usage", "gmbh", "api_calls")]  # its usage is no longer billed

    # Someone voids that Stripe credit note in the dashboard: the customer paid for a void invoice again.
    fake_stripe.edit_invoice(stripe_id, post_payment_credit_notes_amount=0)

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert ("stripe_not_reversed", "gmbh", "CN-2024-01-000001") in kinds(report)


def test_a_changed_stripe_total_is_a_difference(invoiced, engine, fake_stripe) -> None:
    with engine.connect() as conn:
        stripe_id = conn.execute(text("SELECT stripe_invoice_id FROM invoices WHERE organization_id = 'acme'"
                                      )).scalar_one()
    fake_stripe.edit_invoice(stripe_id, total=1800)  # someone changed it in Stripe

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("stripe_total", "acme", "INV-2024-01-000001")]
    assert report["differences"][0]["ours"] == "1300 USD" and report["differences"][0]["found"] == "1800 USD"


def test_a_stripe_invoice_voided_in_stripe_while_ours_is_live_is_a_difference(invoiced, engine, fake_stripe) -> None:
    from tests.test_json_output import assert_valid

    with engine.connect() as conn:
        stripe_id = conn.execute(text("SELECT stripe_invoice_id FROM invoices WHERE organization_id = 'acme'"
                                      )).scalar_one()
    fake_stripe.edit_invoice(stripe_id, status="void")  # voided in the dashboard: the customer owes nothing

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("stripe_void", "acme", "INV-2024-01-000001")]
    assert report["differences"][0]["found"] == "void"
    assert_valid("reconcile", report)


def test_a_credit_note_issued_in_stripe_on_a_live_invoice_is_a_difference(invoiced, engine, fake_stripe) -> None:
    import stripe

    from tests.peers.fixtures import STRIPE_KEY

    with engine.connect() as conn:
        stripe_id = conn.execute(text("SELECT stripe_invoice_id FROM invoices WHERE organization_id = 'acme'"
                                      )).scalar_one()
    # Someone credits $5 of the $13 in the Stripe dashboard: the customer owes $8, our invoice says $13.
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.base_url})
    client.v1.credit_notes.create(params={"invoice": stripe_id, "amount": 500})

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("stripe_credited", "acme", "INV-2024-01-000001")]
    assert (report["differences"][0]["ours"], report["differences"][0]["found"]) == ("nothing credited",
                                                                                     "500 USD credited")


def test_a_late_event_is_a_difference_until_it_is_rolled_up_and_billed(invoiced, engine) -> None:
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "50", utc(2024, 1, 31, 23, 30), key="acme-late")

    result, report = reconcile(invoiced)
    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("rollup_behind", "acme", "api_calls")]
    assert report["differences"][0]["ours"] == "350 in events" and report["differences"][0]["found"] == "300 rolled up"

    assert runner.invoke(app, ["aggregate-hourly"], env=invoiced).exit_code == 0  # picks the late hour up
    _, report = reconcile(invoiced)
    assert kinds(report) == [("unbilled_usage", "acme", "api_calls")]  # the next invoice adjusts it

    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=invoiced).exit_code == 0
    result, report = reconcile(invoiced)
    assert result.exit_code == 0 and report["differences"] == []


def test_late_usage_of_a_metric_priced_in_the_month_is_unbilled_even_if_the_plan_now_makes_it_free(
        invoiced, engine, tmp_path) -> None:
    plans = tmp_path / "free.toml"
    plans.write_text('[[plan]]\nid = "free-api"\nname = "Free API"\ncurrency = "USD"\nbase_fee = 10\n'
                     'free_metrics = ["api_calls"]\n')
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=invoiced).exit_code == 0
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "50", utc(2024, 1, 31, 23, 30), key="acme-late")
    assert runner.invoke(app, ["aggregate-hourly"], env=invoiced).exit_code == 0
    with engine.begin() as conn:  # from February on, acme's API calls are free; January's were priced
        set_plan(conn, "acme", "free-api")

    result, report = reconcile(invoiced)

    # January was billed with the plan that prices them: the 50 late calls are owed, and the next
    # invoice adjusts January with that plan.
    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("unbilled_usage", "acme", "api_calls")]

    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=invoiced).exit_code == 0
    result, report = reconcile(invoiced)
    assert result.exit_code == 0 and report["differences"] == []


def test_orphan_usage_and_fees_never_invoiced_are_differences(invoiced, engine) -> None:
    with engine.begin() as conn:
        add_event(conn, "ghost", "api_calls", "1", utc(2024, 1, 3, 3), key="ghost-1")
        add_org(conn, "forgotten")
        set_plan(conn, "forgotten", "pro")  # a base fee every month, never invoiced for January
    assert runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-03T03"], env=invoiced).exit_code == 0

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("orphan_usage", "ghost", "api_calls"), ("not_invoiced", "forgotten", "2024-01")]


def test_fees_of_the_plan_in_force_in_the_month_never_invoiced_are_a_difference_after_the_plan_dropped_them(
        invoiced, engine, tmp_path) -> None:
    with engine.begin() as conn:
        add_org(conn, "forgotten")
        set_plan(conn, "forgotten", "pro")  # $10 a month in January, never invoiced
    plans = tmp_path / "pro-without-fee.toml"  # from now on, pro has no base fee; January's stays
    plans.write_text(PLANS.replace("base_fee = 10", "base_fee = 0"))
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=invoiced).exit_code == 0

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("not_invoiced", "forgotten", "2024-01")]
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--org", "forgotten"],
                         env=invoiced).exit_code == 0  # it bills January's $10
    result, report = reconcile(invoiced)
    assert result.exit_code == 0 and report["differences"] == []


def test_usage_never_invoiced_is_unbilled_when_the_plan_in_force_in_the_month_priced_it(
        invoiced, engine, tmp_path) -> None:
    with engine.begin() as conn:
        add_org(conn, "newco")
        set_plan(conn, "newco", "euro")  # no fee: only its API calls are owed for January
        add_event(conn, "newco", "api_calls", "40", utc(2024, 1, 20, 9), key="newco-1")
    assert runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-20T09"], env=invoiced).exit_code == 0
    plans = tmp_path / "euro-free-calls.toml"  # from now on, euro's API calls are free; January's were not
    plans.write_text(PLANS.split("[[plan]]\nid = \"euro\"")[0] + '[[plan]]\nid = "euro"\nname = "Euro"\n'
                     'currency = "EUR"\nbase_fee = 5\nfree_metrics = ["api_calls"]\n')
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=invoiced).exit_code == 0

    result, report = reconcile(invoiced)

    assert result.exit_code == ExitCode.MISMATCH
    assert kinds(report) == [("unbilled_usage", "newco", "api_calls")]


def test_an_org_id_that_names_no_organization_is_refused_not_reported_clean(invoiced, engine) -> None:
    with engine.begin() as conn:  # acme's invoice no longer adds up: a check of acme must say so
        conn.execute(text("UPDATE invoice_lines SET amount = amount + 1 WHERE line_no = 1 AND invoice_id = "
                          "(SELECT id FROM invoices WHERE organization_id = 'acme')"))

    result = runner.invoke(app, ["reconcile", "--month", "2024-01", "--org", "acmee", "--json"], env=invoiced)  # a typo

    assert result.exit_code == ExitCode.USAGE, result.output
    report = json.loads(result.stdout)
    assert report["outcome"] == "failed" and report["message"].startswith("--org acmee: no organization with this id")
    assert reconcile(invoiced, "--org", "acme")[0].exit_code == ExitCode.MISMATCH


def test_a_service_that_cannot_be_asked_is_never_all_clear(invoiced) -> None:
    unreachable = {**invoiced, "STRIPE_API_BASE": "http://127.0.0.1:1", "DELIVERY_MAX_ATTEMPTS": "1"}

    result = runner.invoke(app, ["reconcile", "--month", "2024-01"], env=unreachable)

    assert result.exit_code == ExitCode.PEER_UNAVAILABLE
    assert "could not check INV-2024-01-000001 in Stripe" in result.output


def test_a_check_that_could_not_ask_stripe_leaves_the_differences_found_before_in_the_pushgateway(
        invoiced, engine, s3) -> None:
    from tests.peers.pushgateway import Pushgateway

    def differences(exposed: str) -> str | None:
        found = re.search(r'^billing_reconcile_differences\{[^}]*kind="any"[^}]*\} (\S+)$', exposed, re.M)
        return found.group(1) if found else None

    with engine.connect() as conn:
        key = conn.execute(text("SELECT s3_key FROM invoices WHERE organization_id = 'gmbh'")).scalar_one()
    s3.client().delete_object(Bucket=s3.bucket, Key=key)
    gateway = Pushgateway().start()
    try:
        env = {**invoiced, "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
        assert reconcile(env)[0].exit_code == ExitCode.MISMATCH
        assert differences(gateway.metrics()) == "1"

        unreachable = {**env, "STRIPE_API_BASE": "http://127.0.0.1:1", "DELIVERY_MAX_ATTEMPTS": "1"}
        assert reconcile(unreachable)[0].exit_code == ExitCode.PEER_UNAVAILABLE
        # Nothing is known about this month now: the difference found before still stands (the
        # BillingReconcileMismatch alert stays), beside the failed run (billing_last_run_success 0).
        exposed = gateway.metrics()
    finally:
        gateway.stop()
    assert differences(exposed) == "1"
    assert re.search(r'^billing_last_run_success\{[^}]*job="billing-reconcile"[^}]*\} 0$', exposed, re.M)


def test_a_check_stopped_by_sigterm_never_prints_that_everything_agrees(invoiced, engine, fake_stripe, capsys) -> None:
    import threading

    from billing_cli.delivery.payments import StripeGateway
    from billing_cli.jobs.reconcile import Checks, reconcile_month
    from billing_cli.report.output import Output
    from billing_cli.report.reconcile import reconcile_summary
    from tests.peers.fixtures import STRIPE_KEY

    stop = threading.Event()
    stop.set()  # SIGTERM before the first invoice was asked about in Stripe
    gateway = StripeGateway(STRIPE_KEY, api_base=fake_stripe.base_url)
    result = reconcile_month(engine.begin, Month(2024, 1), Checks(payments=gateway), stop=stop)
    capsys.readouterr()

    reconcile_summary(Output(log_format="rich"), result)

    printed = capsys.readouterr().out
    assert result.summary().outcome == "interrupted" and result.checked["invoices"] == 0
    assert "agree" not in printed and "✅" not in printed
    assert "interrupted after 0 invoices" in printed


def test_status_check_fails_on_a_failed_latest_reconcile(invoiced, engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET emailed_at = NULL WHERE organization_id = 'gmbh'"))
    assert reconcile(invoiced)[0].exit_code == ExitCode.MISMATCH

    status = runner.invoke(app, ["status", "--check", "--json"], env=invoiced)

    problems = {s["job"]: s["problems"] for s in json.loads(status.stdout)}
    assert status.exit_code == ExitCode.UNHEALTHY
    assert problems["reconcile"] == ["last run (2024-01) mismatch"]


def test_a_clean_check_of_another_month_never_hides_a_month_that_differs(invoiced, engine) -> None:
    """The daily check moves on to the next month on the 1st, and an operator may check any month:
    January's difference stays in `status --check` and in the Pushgateway (one group per month)
    until January itself is checked clean."""
    from tests.peers.pushgateway import Pushgateway

    def differences(exposed: str, month: str) -> str | None:
        for labels, value in re.findall(r'^billing_reconcile_differences\{([^}]*)\} (\S+)$', exposed, re.M):
            if 'kind="any"' in labels and f'month="{month}"' in labels:
                return value
        return None

    def problems(env) -> list[str]:
        status = runner.invoke(app, ["status", "--check", "--json"], env=env)
        return {s["job"]: s["problems"] for s in json.loads(status.stdout)}["reconcile"]

    gateway = Pushgateway().start()
    try:
        env = {**invoiced, "PROMETHEUS_PUSHGATEWAY_URL": gateway.url}
        with engine.begin() as conn:
            conn.execute(text("UPDATE invoices SET emailed_at = NULL WHERE organization_id = 'gmbh'"))
        assert reconcile(env)[0].exit_code == ExitCode.MISMATCH
        assert runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=env).exit_code == 0
        february = runner.invoke(app, ["reconcile", "--month", "2024-02", "--json"], env=env)
        assert february.exit_code == 0, february.output

        assert problems(env) == ["last run (2024-01) mismatch"]
        exposed = gateway.metrics()
        assert (differences(exposed, "2024-01"), differences(exposed, "2024-02")) == ("1", "0")

        with engine.begin() as conn:  # January's e-mail is sent after all, and January checked again
            conn.execute(text("UPDATE invoices SET emailed_at = now() WHERE organization_id = 'gmbh'"))
        assert reconcile(env)[0].exit_code == 0
        assert problems(env) == []
        assert differences(gateway.metrics(), "2024-01") == "0"
    finally:
        gateway.stop()


def test_organization_ids_that_sort_differently_by_locale_and_by_bytes_reconcile_clean(
        db_url, engine, tmp_path, clean_env) -> None:
    # Whatever the database's collation, every side is matched to the others: ids with case,
    # accents, punctuation and non-Latin letters, and a pair of ids one the prefix of the other.
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    env = {"DATABASE_URL": db_url}
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=env).exit_code == 0
    ids = ["Zeta", "alpha", "Ålborg", "_under", "org-1", "org-10", "org-1-b", "日本", "émile", "Émile"]
    with engine.begin() as conn:
        # ids compared by a linguistic collation (ICU's English) rather than this server's default:
        # "alpha" < "Zeta" there, "Zeta" < "alpha" byte-wise
        for table in ("organizations", "usage_events", "usage_hourly", "invoices"):
            column = "id" if table == "organizations" else "organization_id"
            conn.execute(text(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar(255) COLLATE "en-x-icu"'))
        assert conn.execute(text("SELECT 'alpha' < 'Zeta' COLLATE \"en-x-icu\"")).scalar_one()
        for n, org in enumerate(ids):
            add_org(conn, org)
            set_plan(conn, org, "pro")
            add_event(conn, org, "api_calls", str(n + 1), utc(2024, 1, 10, 9), key=f"k-{n}")
            add_event(conn, org, "api_calls", "1.5", utc(2024, 1, 10, 9), key=f"s-{n}")
        add_event(conn, "ghost", "api_calls", "7", utc(2024, 1, 10, 9), key="ghost")  # no organizations row
    assert runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-10T09"], env=env).exit_code == 0
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == 0

    result, report = reconcile(env)

    # Only the orphan usage differs; every other pair agreed on all three sides.
    assert [(d["kind"], d["organization_id"]) for d in report["differences"]] == [("orphan_usage", "ghost")], \
        report["differences"]
    assert result.exit_code == ExitCode.MISMATCH


def test_usage_of_a_period_still_running_is_not_called_unbilled(engine, db_url) -> None:
    """Reconciling a month before its periods end (an anchored organization's period runs into the
    next month; the daily reconcile checks the previous month from the 1st): the usage is rolled up
    but no invoice can bill it yet, which is no difference. Events against roll-ups still are."""
    month = Month.containing(utc_now())  # its periods end next month at the earliest: after now
    day15 = month.start.replace(day=15)  # in the anchored period 15th - 14th, whatever today is
    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        for org_id, anchor, at in (("cal", None, month.start), ("a15", 15, day15)):
            add_org(conn, org_id)
            set_plan(conn, org_id, "pro")
            conn.execute(text("UPDATE organizations SET billing_anchor_day = :d WHERE id = :o"), {"d": anchor, "o": org_id})
            add_event(conn, org_id, "api_calls", "100", at, key=f"{org_id}-1")
            add_usage(conn, org_id, "api_calls", "100", at)
        add_event(conn, "a15", "api_calls", "7", day15 + timedelta(hours=2), key="a15-late")  # not rolled up yet
    check = runner.invoke(app, ["reconcile", "--month", str(month), "--json"], env={"DATABASE_URL": db_url})
    assert check.exit_code == 11, check.output
    document = json.loads(check.stdout)
    assert [(d["kind"], d["organization_id"]) for d in document["differences"]] == [("rollup_behind", "a15")]
    assert document["counts"]["usage_rows_period_running"] == 2  # compared with invoices once the periods end
    from tests.test_json_output import assert_valid

    assert_valid("reconcile", document)


def test_reconcile_still_compares_the_events_of_an_anchored_period_s_days_in_the_month_after_a_pruned_one(
        engine) -> None:
    """acme's January period is 15 Jan - 15 Feb. January's events were pruned (their roll-ups stand for
    them), February's were not. An event of 5 February that no roll-up has seen is in January's
    period: reconcile of January compares the roll-ups with the events for February's days (not
    with the roll-ups themselves), or no reconcile would ever say so (February's does not cover 5
    February)."""
    from billing_cli.jobs.aggregate import aggregate_one_hour
    from billing_cli.jobs.reconcile import Checks, Kind, reconcile_month
    from tests.test_billing_periods import org

    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        org(conn, "acme", 15)
        add_event(conn, "acme", "api_calls", "100", utc(2024, 1, 20, 10))
    aggregate_one_hour(engine.begin, utc(2024, 1, 20, 10))
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "40", utc(2024, 2, 5, 10))  # not rolled up
        conn.execute(text("INSERT INTO usage_pruned_months (period_start, events, bytes, forced) "
                          "VALUES ('2024-01-01', 1, 0, false)"))  # as `billing usage prune --before 2024-02` records it
    kinds = {month: {d.kind for d in reconcile_month(engine.begin, month, Checks()).differences
                     if d.organization_id == "acme"} for month in (Month(2024, 1), Month(2024, 2))}
    assert any(Kind.ROLLUP_BEHIND in found for found in kinds.values()), kinds


def test_reconcile_of_an_anchored_period_reads_the_roll_ups_of_both_months_when_both_were_pruned(engine) -> None:
    """The same period, 15 Jan - 15 Feb, with January and February both pruned (`--before 2024-03`):
    the roll-ups stand for the events of both months' days, no event is left to say otherwise."""
    from billing_cli.jobs.aggregate import aggregate_one_hour
    from billing_cli.jobs.reconcile import Checks, Kind, reconcile_month
    from tests.test_billing_periods import org

    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        org(conn, "acme", 15)
        for at in (utc(2024, 1, 20, 10), utc(2024, 2, 5, 10)):
            add_event(conn, "acme", "api_calls", "100", at)
    for at in (utc(2024, 1, 20, 10), utc(2024, 2, 5, 10)):
        aggregate_one_hour(engine.begin, at)
    with engine.begin() as conn:  # as a prune drops the partitions: the events are gone, the roll-ups stay
        conn.execute(text("DELETE FROM usage_events"))
        conn.execute(text("INSERT INTO usage_pruned_months (period_start, events, bytes, forced) "
                          "VALUES ('2024-01-01', 1, 0, false), ('2024-02-01', 1, 0, false)"))
    found = {d.kind for d in reconcile_month(engine.begin, Month(2024, 1), Checks()).differences}
    assert Kind.ROLLUP_BEHIND not in found, found
    assert Kind.UNBILLED_USAGE in found  # 200 rolled up, nothing billed: the comparison did run
