"""Delivering invoices to real local peers: S3 (moto server), Stripe (our fake), SMTP (aiosmtpd),
through the real client libraries. Exactly once across reruns, faults and retries."""

from __future__ import annotations

import hashlib
import re
import urllib.request
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal as D

import pytest
import stripe
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.peers.fixtures import STRIPE_KEY, our_lines, peer_env, peer_process_env, stripe_lines
from tests.peers.stripe_server import FakeStripeServer

runner = CliRunner()


@pytest.fixture
def env(billed, s3, mail, fake_stripe, clean_env) -> dict[str, str]:
    return peer_env(billed, s3, mail, fake_stripe, DELIVERY_MAX_RETRY_SECONDS="5")


def run(env: dict[str, str], *args: str):
    return runner.invoke(app, ["invoice-monthly", "--month", "2024-01", *args], env=env)


def stored(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("""
            SELECT i.organization_id, i.id, i.number, i.total, i.currency, i.pdf_sha256, i.s3_key, i.s3_uploaded_at,
                   i.stripe_invoice_id, i.stripe_status, i.stripe_hosted_url, i.emailed_at, i.email_message_id,
                   o.stripe_customer_id
            FROM invoices i JOIN organizations o ON o.id = i.organization_id WHERE i.status = 'issued'""")).all()
    return {r.organization_id: r._asdict() for r in rows}


def stripe_posts(fake: FakeStripeServer) -> int:
    return len([r for r in fake.requests if r.method == "POST" and r.status == 200 and not r.replayed])


def test_every_invoice_is_uploaded_billed_and_mailed_once(env, engine, s3, mail, fake_stripe) -> None:
    result = run(env)

    assert result.exit_code == 0, result.output
    invoices = stored(engine)
    assert set(invoices) == {"org-1", "org-2", "org-3"}
    client = s3.client()
    # S3: private object with the exact PDF bytes, content type, encryption, checksum and metadata.
    for org_id, inv in invoices.items():
        assert inv["s3_key"] == f"invoices/2024/01/{org_id}/{inv['number']}.pdf"
        head = client.head_object(Bucket=s3.bucket, Key=inv["s3_key"], ChecksumMode="ENABLED")
        body = client.get_object(Bucket=s3.bucket, Key=inv["s3_key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == inv["pdf_sha256"] and body.startswith(b"%PDF")
        assert head["ContentType"] == "application/pdf" and head["ServerSideEncryption"] == "AES256"
        assert head["Metadata"] == {"invoice-number": inv["number"]}
    # Stripe: one customer per organization, one sent invoice per invoice, totals to the cent.
    customers = fake_stripe.customers
    assert {c["metadata"]["organization_id"] for c in customers.values()} == {"org-1", "org-2", "org-3"}
    stripe_invoices = fake_stripe.invoices
    assert len(stripe_invoices) == 3 and stripe_lines(fake_stripe) == our_lines(engine)
    for org_id, inv in invoices.items():
        remote = stripe_invoices[inv["stripe_invoice_id"]]
        minor = int(inv["total"] * (100 if inv["currency"] in ("USD", "EUR") else 1))
        assert remote["customer"] == inv["stripe_customer_id"] and customers[remote["customer"]]["email"] == \
            f"{org_id}@example.com"
        assert (remote["status"], remote["total"], remote["currency"]) == ("open", minor, inv["currency"].lower())
        assert remote["collection_method"] == "send_invoice" and remote["auto_advance"] is False
        # Our number and our due date (issue date + 30 days, end of day UTC), not Stripe's own.
        due = datetime.combine(date.today() + timedelta(days=30), time(23, 59, 59), tzinfo=UTC)
        assert remote["number"] == inv["number"] and remote["due_date"] == int(due.timestamp())
        assert remote["metadata"] == {"invoice_number": inv["number"], "billing_invoice_id": str(inv["id"])}
        assert inv["stripe_status"] == "sent" and len(fake_stripe.sent_invoices[remote["id"]]) == 1
    assert {r.stripe_version for r in fake_stripe.requests} == {"2026-10-28.endive"}
    creates = fake_stripe.requests_for("POST", "/v1/invoices")
    assert all(r.idempotency_key and r.idempotency_key.startswith("billing-invoice-") for r in creates)
    # E-mail: one message per invoice, to the organization, with the PDF that is in S3.
    assert len(mail.received) == 3
    for item in mail.received:
        message = item.message
        org_id = item.recipients[0].split("@")[0]
        inv = invoices[org_id]
        assert item.recipients == [f"{org_id}@example.com"]
        assert message["Subject"].startswith(f"Invoice {inv['number']} for 2024-01: ")
        assert message["Message-ID"] == inv["email_message_id"]
        plain = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert inv["number"] in plain and inv["number"] in html and "Due date" in plain
        attachment = next(message.iter_attachments())
        assert attachment.get_filename() == f"{inv['number']}.pdf"
        pdf = attachment.get_content()
        assert hashlib.sha256(pdf).hexdigest() == inv["pdf_sha256"]
        # Stripe's page of the invoice to view and pay it; no S3 link beside the attached PDF.
        page = stripe_invoices[inv["stripe_invoice_id"]]["hosted_invoice_url"]
        assert page and inv["stripe_hosted_url"] == page
        assert f"View and pay the invoice online: {page}" in plain and f'href="{page}"' in html
        assert "X-Amz-Signature" not in plain and "Download the PDF" not in plain
    assert "uploaded to S3, Stripe invoice sent, e-mailed" in run(env, "--rich", "--org", "org-1",
                                                                   "--regenerate").output


def test_a_rerun_after_success_touches_no_peer(env, engine, mail, fake_stripe) -> None:
    assert run(env).exit_code == 0
    before, posts = stored(engine), stripe_posts(fake_stripe)

    again = run(env)

    assert again.exit_code == 0 and "already_invoiced=3" in again.output
    assert stored(engine) == before and stripe_posts(fake_stripe) == posts and len(mail.received) == 3


def test_dry_run_calls_no_outside_service(env, engine, s3, mail, fake_stripe) -> None:
    result = run(env, "--dry-run")
    assert result.exit_code == 0 and "invoiced=3" in result.output
    assert fake_stripe.requests == [] and mail.received == []
    assert s3.client().list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    assert stored(engine) == {}


def test_a_delivery_that_is_off_is_skipped_not_reported_as_done(env, engine, mail, fake_stripe) -> None:
    result = run({**env, "INVOICE_ENABLE_STRIPE": "false", "INVOICE_ENABLE_EMAIL": "no"})
    assert result.exit_code == 0
    assert "start job=invoice-monthly month=2024-01 dry_run=false" in result.output
    assert "s3=on stripe=off email=off" in result.output
    assert all(inv["s3_key"] and inv["stripe_invoice_id"] is None and inv["emailed_at"] is None
               for inv in stored(engine).values())
    assert fake_stripe.requests == [] and mail.received == []
    rich = run({**env, "INVOICE_ENABLE_STRIPE": "false"}, "--rich")
    assert "stripe skipped (INVOICE_ENABLE_STRIPE is off)" in rich.output

    # Turning Stripe on later delivers exactly what is missing.
    later = run(env)
    assert later.exit_code == 0 and len(fake_stripe.invoices) == 3 and len(mail.received) == 3


def test_transient_faults_are_retried(env, engine, mail, fake_stripe) -> None:
    fake_stripe.fail_next(1, 500, method="POST", path_prefix="/v1/invoices")
    fake_stripe.fail_next(1, 429, method="POST", path_prefix="/v1/invoiceitems")
    fake_stripe.drop_next(1, method="POST", path_prefix="/v1/customers")  # runs, but the answer is lost
    mail.fail_next(1, 451)

    result = run(env, "--concurrency", "1")

    assert result.exit_code == 0, result.output
    assert len(fake_stripe.customers) == 3 and len(fake_stripe.invoices) == 3  # no duplicate from retries
    assert stripe_lines(fake_stripe) == our_lines(engine)
    assert len(mail.received) == 3


def test_stripe_recovers_and_the_rerun_completes_only_missing_steps(env, engine, s3, mail, fake_stripe) -> None:
    fake_stripe.fail_next(100, 500, method="POST", path_prefix="/v1/invoices/")  # finalize fails for everyone

    first = run(env, "--concurrency", "1")

    assert first.exit_code == ExitCode.PARTIAL
    assert "errors_stripe=3" in first.output and "errors_s3=0" in first.output
    drafts = stored(engine)
    assert {inv["stripe_status"] for inv in drafts.values()} == {"draft"} and mail.received == []

    fake_stripe.clear_faults()  # the outage is over
    mail.fail_next(1, 554)  # ... but one e-mail is refused for good this time
    second = run(env, "--concurrency", "1")

    assert second.exit_code == ExitCode.PARTIAL and "errors_email=1" in second.output
    done = stored(engine)
    assert all(done[o]["s3_uploaded_at"] == drafts[o]["s3_uploaded_at"] for o in done)  # not uploaded again
    assert len(fake_stripe.invoices) == 3 and {i["status"] for i in fake_stripe.invoices.values()} == {"open"}
    assert stripe_lines(fake_stripe) == our_lines(engine)
    assert len(mail.received) == 2

    third = run(env)
    assert third.exit_code == 0 and len(mail.received) == 3
    assert sorted(m.recipients[0] for m in mail.received) == [f"org-{n}@example.com" for n in (1, 2, 3)]


def test_s3_refusing_uploads_is_an_s3_error_and_stops_the_later_steps(env, engine, s3, mail, fake_stripe) -> None:
    result = run({**env, "INVOICE_S3_BUCKET": "no-such-bucket"})
    assert result.exit_code == ExitCode.PARTIAL and "errors_s3=3" in result.output
    assert "NoSuchBucket" in result.output
    assert fake_stripe.requests == [] and mail.received == []
    assert run(env).exit_code == 0 and len(mail.received) == 3


def test_invoices_issued_whose_upload_failed_count_in_the_runs_revenue_once(env, engine, s3, mail, fake_stripe) -> None:
    """The invoices exist (numbers taken, totals owed): the run that issued them reports their
    revenue even though a delivery failed; the rerun that completes them does not count them again."""
    first = run({**env, "INVOICE_S3_BUCKET": "no-such-bucket"})

    assert first.exit_code == ExitCode.PARTIAL and "errors_s3=3" in first.output
    assert len(stored(engine)) == 3
    assert "revenue_EUR=1.23 revenue_USD=38.50" in first.output, first.output
    second = run(env)
    assert second.exit_code == 0 and "already_invoiced=3" in second.output
    assert "revenue_" not in second.output


def test_an_unreachable_smtp_server_is_an_email_error(env, engine, mail) -> None:
    result = run({**env, "INVOICE_SMTP_PORT": "1", "DELIVERY_MAX_ATTEMPTS": "2", "DELIVERY_MAX_RETRY_SECONDS": "1"})
    assert result.exit_code == ExitCode.PARTIAL and "errors_email=3" in result.output
    assert "cannot talk to SMTP server 127.0.0.1:1" in result.output


def test_one_smtp_session_carries_the_run_and_ends_with_quit(env, engine, mail) -> None:
    result = run({**env, "INVOICE_ENABLE_STRIPE": "false"}, "--concurrency", "1")

    assert result.exit_code == 0, result.output
    assert sorted(m.recipients[0] for m in mail.received) == [f"org-{n}@example.com" for n in (1, 2, 3)]
    assert len({m.peer for m in mail.received}) == 1  # one connection, EHLO and AUTH for the three messages
    assert mail.quits == 1


def test_an_idle_session_the_server_dropped_is_replaced_before_the_next_message() -> None:
    from email.message import EmailMessage

    from billing_cli.delivery.mailer import SmtpMailer
    from tests.peers.mail_server import MailServer

    def message(subject: str) -> EmailMessage:
        m = EmailMessage()
        m["Subject"], m["From"], m["To"] = subject, "billing@example.cloud", "org-1@example.com"
        m.set_content(subject)
        return m

    server = MailServer().start()
    mailer = SmtpMailer("127.0.0.1", server.port, "none", username=server.username, password=server.password,
                        max_attempts=1, timeout_seconds=5)  # one attempt: the replacement is no retry
    try:
        mailer.send(message("first"))
        server.stop()  # the server goes away and comes back: the pooled session is dead
        server.start()
        mailer.send(message("second"))
    finally:
        mailer.close()
        server.stop()
    assert [m.message["Subject"] for m in server.received] == ["first", "second"]
    assert len({m.peer for m in server.received}) == 2


def test_wrong_smtp_password_is_permanent_and_never_printed(env, engine, mail) -> None:
    result = run({**env, "INVOICE_SMTP_PASSWORD": "wrong-SECRET"})
    assert result.exit_code == ExitCode.PARTIAL and "SMTP authentication failed" in result.output
    assert "wrong-SECRET" not in result.output and mail.password not in result.output
    assert STRIPE_KEY not in result.output


def test_an_address_that_would_inject_headers_fails_only_that_organization(env, engine, mail, fake_stripe) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET email = 'org-2@example.com\r\nBcc: victim@example.com' "
                          "WHERE id = 'org-2'"))
    result = run(env)
    assert result.exit_code == ExitCode.PARTIAL and "errors_data=1" in result.output
    assert "organization e-mail contains control characters" in result.output
    assert sorted(m.recipients[0] for m in mail.received) == ["org-1@example.com", "org-3@example.com"]
    assert "org-2" not in stored(engine) and len(fake_stripe.customers) == 2  # nothing issued or sent for it

    with engine.begin() as conn:  # fixed at the source: the rerun issues and delivers it
        conn.execute(text("UPDATE organizations SET email = 'org-2@example.com' WHERE id = 'org-2'"))
    assert run(env).exit_code == 0 and len(mail.received) == 3


def test_a_stripe_total_that_differs_from_ours_fails_loudly_and_is_not_finalized(env, engine, fake_stripe) -> None:
    fake_stripe.fail_next(100, 500, method="POST", path_prefix="/v1/invoices/")
    run({**env, "INVOICE_ENABLE_EMAIL": "false"}, "--org", "org-2")
    draft = stored(engine)["org-2"]["stripe_invoice_id"]
    fake_stripe.clear_faults()
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.base_url})
    customer = fake_stripe.invoices[draft]["customer"]
    client.v1.invoice_items.create(params={"customer": customer, "invoice": draft, "amount": 100,
                                           "currency": "usd", "description": "edited by hand"})

    result = run({**env, "INVOICE_ENABLE_EMAIL": "false"}, "--org", "org-2")

    assert result.exit_code == ExitCode.PARTIAL
    assert "differs from ours" in result.output and "not finalized" in result.output
    assert fake_stripe.invoices[draft]["status"] == "draft"
    assert D(stored(engine)["org-2"]["total"]) == D("27.50")


def test_the_client_side_rate_limit_keeps_stripe_from_answering_429(env, engine, fake_stripe) -> None:
    fake_stripe.rate_limit_per_second = 5  # the peer enforces a limit, like Stripe; ours is set below it
    result = run({**env, "STRIPE_REQUESTS_PER_SECOND": "4", "INVOICE_ENABLE_EMAIL": "false"})
    assert result.exit_code == 0, result.output
    assert fake_stripe.rejected_429 == 0 and len(fake_stripe.invoices) == 3
    assert len(fake_stripe.requests) >= 12  # enough calls that an unthrottled client would hit the limit


def test_stripe_calls_go_through_the_proxy_the_environment_names(env, engine, fake_stripe) -> None:
    only_stripe = {**env, "INVOICE_ENABLE_S3": "false", "INVOICE_ENABLE_EMAIL": "false", "DELIVERY_MAX_ATTEMPTS": "1"}
    dead_proxy = {**only_stripe, "HTTP_PROXY": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1"}

    through_proxy = run(dead_proxy)
    assert through_proxy.exit_code == ExitCode.PARTIAL and "errors_stripe=3" in through_proxy.output
    assert "cannot reach Stripe" in through_proxy.output and fake_stripe.requests == []

    bypassed = run({**dead_proxy, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    assert bypassed.exit_code == 0, bypassed.output
    assert len(fake_stripe.invoices) == 3


def test_stripe_answering_429_after_our_backoff_fails_that_step_and_the_rerun_completes(env, engine, mail,
                                                                                       fake_stripe) -> None:
    fake_stripe.fail_next(100, 429, method="POST", path_prefix="/v1/invoices")
    limited = run({**env, "DELIVERY_MAX_ATTEMPTS": "2"})

    assert limited.exit_code == ExitCode.PARTIAL and "errors_stripe=3" in limited.output
    assert "Stripe draft invoice: rate limited (429) after 2 attempts" in limited.output
    assert mail.received == [] and fake_stripe.invoices == {}

    fake_stripe.clear_faults()
    assert run(env).exit_code == 0
    assert len(fake_stripe.invoices) == 3 and len(mail.received) == 3


def test_the_rate_limiter_admits_a_burst_up_to_the_limit_and_never_more_per_window() -> None:
    """A call may reach the server any time between its start and its answer: a new one starts only
    while fewer than the limit are in flight or were answered within the last second, so no second
    at the server can hold more than the limit, whatever the delays."""
    from billing_cli.delivery.payments import RateLimiter

    now = [100.0]  # a virtual clock: sleeping moves it forward

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(5, clock=lambda: now[0], sleep=sleep)
    calls = []
    for _ in range(17):
        with limiter.slot():
            start = now[0]
            now[0] += 0.01  # the call takes a little time before its answer
        calls.append((start, now[0]))

    starts = [start for start, _ in calls]
    assert starts[:5] == pytest.approx([100.0, 100.01, 100.02, 100.03, 100.04])  # no spacing below the limit
    assert starts[5] == pytest.approx(100.01 + RateLimiter.WINDOW)  # a second after the first call's answer
    # However late each call arrived (up to its answer), no one-second window held more than five.
    for start_j, _ in calls:
        could_be_in_its_second = [1 for start, end in calls if start <= start_j and end > start_j - RateLimiter.WINDOW]
        assert len(could_be_in_its_second) <= 5


def test_a_call_in_flight_holds_its_place_in_the_rate_limit_until_a_window_after_its_answer() -> None:
    import threading
    import time as timer
    from contextlib import ExitStack

    from billing_cli.delivery.payments import RateLimiter

    limiter = RateLimiter(2)
    limiter.WINDOW = 0.3
    entered = threading.Event()

    def third_call() -> None:
        with limiter.slot():
            entered.set()

    with ExitStack() as in_flight:
        in_flight.enter_context(limiter.slot())
        second = in_flight.enter_context(ExitStack())
        second.enter_context(limiter.slot())
        waiter = threading.Thread(target=third_call, daemon=True)
        waiter.start()
        assert not entered.wait(0.5)  # two calls in flight, however long: no third
        second.close()  # one answered
        answered = timer.monotonic()
        assert entered.wait(5)
        assert timer.monotonic() - answered >= 0.3 - 0.01  # its place came back a window after the answer
    waiter.join(5)


def test_key_prefix_and_link_expiry_settings(env, engine, s3, mail) -> None:
    result = run({**env, "INVOICE_S3_PREFIX": "/billing/prod/"})
    assert result.exit_code == 0, result.output
    keys = sorted(inv["s3_key"] for inv in stored(engine).values())
    assert keys[0] == "billing/prod/invoices/2024/01/org-1/INV-2024-01-000001.pdf"
    too_long = run({**env, "INVOICE_S3_LINK_EXPIRY_SECONDS": "700000"})
    assert too_long.exit_code == ExitCode.CONFIG and "INVOICE_S3_LINK_EXPIRY_SECONDS" in too_long.output


def s3_links_in(item) -> list[str]:
    return [word for word in item.message.get_body(("plain",)).get_content().split() if "X-Amz-Signature=" in word]


def test_a_pdf_over_the_attachment_limit_is_linked_for_as_long_as_the_e_mail_says(env, engine, s3, mail,
                                                                                 monkeypatch) -> None:
    monkeypatch.delenv("AWS_SESSION_TOKEN")  # long-lived credentials: a link can last its whole lifetime
    before = datetime.now(UTC)
    result = run({**env, "INVOICE_EMAIL_ATTACHMENT_MAX_BYTES": "1000", "INVOICE_S3_LINK_EXPIRY_SECONDS": "3600"})

    assert result.exit_code == 0, result.output
    assert len(mail.received) == 3
    for item in mail.received:
        assert list(item.message.iter_attachments()) == []
        plain = item.message.get_body(("plain",)).get_content()
        assert "is ready." in plain and "please find attached" not in plain
        [link] = s3_links_in(item)
        assert "X-Amz-Expires=3600" in link and "View and pay the invoice online: https://" in plain
        until = datetime.strptime(plain.split("link valid until ")[1][:16], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        assert before - timedelta(minutes=1) <= until - timedelta(seconds=3600) <= datetime.now(UTC)
        inv = next(i for i in stored(engine).values() if i["email_message_id"] == item.message["Message-ID"])
        with urllib.request.urlopen(link) as response:  # the presigned URL serves the stored PDF
            assert hashlib.sha256(response.read()).hexdigest() == inv["pdf_sha256"]


def test_temporary_credentials_give_no_link_that_would_die_before_its_stated_time(env, engine, s3, mail,
                                                                                    monkeypatch) -> None:
    # Credentials that expire in an hour, as IRSA's do: a 7-day link signed with them would stop
    # working after that hour, so none is sent, and a PDF too large to attach is not e-mailed.
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", expires)
    limited = {**env, "INVOICE_EMAIL_ATTACHMENT_MAX_BYTES": "1000"}

    refused = run(limited)

    assert refused.exit_code == ExitCode.PARTIAL and mail.received == []
    assert "over INVOICE_EMAIL_ATTACHMENT_MAX_BYTES and there is no download link" in refused.output
    assert all(inv["s3_uploaded_at"] and inv["emailed_at"] is None for inv in stored(engine).values())

    # A lifetime the credentials do outlive gets its link; the PDF small enough is attached again.
    shorter = run({**limited, "INVOICE_S3_LINK_EXPIRY_SECONDS": "1800"})
    assert shorter.exit_code == 0, shorter.output
    assert all("X-Amz-Expires=1800" in s3_links_in(item)[0] for item in mail.received) and len(mail.received) == 3


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_modes_verify_the_server_certificate(mode, env, engine, tmp_path) -> None:
    from tests.peers.mail_server import MailServer, self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    server = MailServer(tls=mode, cert_file=cert, key_file=key).start()
    try:
        tls_env = {**env, "INVOICE_SMTP_PORT": str(server.port), "INVOICE_SMTP_SECURITY": mode,
                   "INVOICE_SMTP_USERNAME": server.username, "INVOICE_SMTP_PASSWORD": server.password,
                   "INVOICE_ENABLE_STRIPE": "false", "DELIVERY_MAX_ATTEMPTS": "1"}
        untrusted = run(tls_env)  # the system trust store does not know our test certificate
        assert untrusted.exit_code == ExitCode.PARTIAL and "certificate" in untrusted.output.lower()
        assert server.received == []

        trusted = run({**tls_env, "SSL_CERT_FILE": cert})
        assert trusted.exit_code == 0, trusted.output
        assert len(server.received) == 3
    finally:
        server.stop()


def test_a_second_run_while_the_first_is_running_exits_7_and_touches_nothing(billed, s3, mail, engine, fake_stripe,
                                                                             clean_env, tmp_path) -> None:
    import subprocess

    from tests.conftest import BILLING

    fake_stripe.latency = 0.3  # a slow Stripe keeps the first run busy for seconds
    process_env = peer_process_env(billed, s3, mail, fake_stripe, INVOICE_CONCURRENCY="1")
    first = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=process_env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:  # wait until it is really working
        if line.startswith("found "):
            break
    second = subprocess.run([*BILLING, "invoice-monthly", "--month", "2024-01"], env=process_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    rest, _ = first.communicate(timeout=120)

    assert second.returncode == ExitCode.ALREADY_RUNNING
    assert "another invoice-monthly run for 2024-01 is in progress" in second.stderr and second.stdout == ""
    assert first.returncode == 0, rest
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT job, status FROM job_runs")).all()
    assert [tuple(r) for r in runs] == [("invoice-monthly", "succeeded")]  # the second left no trace
    assert len(fake_stripe.invoices) == 3


CURRENCY_PLANS = "\n".join(f"""
[[plan]]
id = "{code.lower()}"
name = "{code}"
currency = "{code}"
  [[plan.price]]
  metric = "api_calls"
  model = "per_unit"
  unit_price = {price}
""" for code, price in (("KWD", "0.0012345"), ("ISK", "1.2345"), ("MGA", "1.2345"), ("JPY", "1.2345")))


def test_the_pdf_total_is_what_stripe_charges_where_stripe_differs_from_iso(db_url, engine, s3, mail, fake_stripe,
                                                                            clean_env, tmp_path) -> None:
    import io

    from pypdf import PdfReader

    from tests.data import add_org, add_usage, set_plan

    plans = tmp_path / "plans.toml"
    plans.write_text(CURRENCY_PLANS)
    env = peer_env(db_url, s3, mail, fake_stripe)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=env).exit_code == 0
    with engine.begin() as conn:
        for code in ("KWD", "ISK", "MGA", "JPY"):
            add_org(conn, f"org-{code.lower()}", currency=code)
            set_plan(conn, f"org-{code.lower()}", code.lower())
            add_usage(conn, f"org-{code.lower()}", "api_calls", "1000")

    result = run(env)

    assert result.exit_code == 0, result.output
    # 1,000 x 0.0012345 = 1.2345 KWD: Stripe charges tens of fils, so 1.230; ISK 1234.5 -> 1235 (whole
    # krónur, sent as 123500); MGA 1234.5 -> 1235.00 (zero-decimal at Stripe); JPY 1234.5 -> 1235.
    expected = {"KWD": ("1.230", 1230, "KWD 1.230"), "ISK": ("1235", 123500, "ISK 1,235"),
                "MGA": ("1235.00", 1235, "MGA 1,235.00"), "JPY": ("1235", 1235, "¥1,235")}
    for org, invoice in stored(engine).items():
        total, stripe_amount, printed = expected[invoice["currency"]]
        remote = fake_stripe.invoices[invoice["stripe_invoice_id"]]
        assert (str(invoice["total"]), remote["total"]) == (total, stripe_amount), org
        pdf = s3.client().get_object(Bucket=s3.bucket, Key=invoice["s3_key"])["Body"].read()
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
        assert f"Total due {printed}" in text, (org, text)


def test_an_invoice_issued_with_stripe_off_that_stripe_cannot_charge_fails_as_stripe_before_any_call(
        db_url, engine, s3, mail, fake_stripe, clean_env, tmp_path) -> None:
    """Issued with Stripe off, an invoice keeps the currency's ISO unit (1.235 KWD, in fils); Stripe
    charges tens of fils only. Once Stripe is turned on, completing it fails its Stripe step saying
    why, before any call (no customer, no empty draft left in Stripe), never as an "unexpected error"
    of the data; the others are delivered."""
    from tests.data import add_org, add_usage, set_plan

    plans = tmp_path / "plans.toml"
    plans.write_text(CURRENCY_PLANS)
    env = peer_env(db_url, s3, mail, fake_stripe)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env=env).exit_code == 0
    with engine.begin() as conn:
        for code in ("KWD", "JPY"):
            add_org(conn, f"org-{code.lower()}", currency=code)
            set_plan(conn, f"org-{code.lower()}", code.lower())
            add_usage(conn, f"org-{code.lower()}", "api_calls", "1000")
    off = run({**env, "INVOICE_ENABLE_STRIPE": "false"})
    assert off.exit_code == 0, off.output
    assert str(stored(engine)["org-kwd"]["total"]) == "1.235"

    result = run(env)

    assert result.exit_code == ExitCode.PARTIAL, result.output
    assert "errors_stripe=1" in result.output and "errors_data=0" in result.output, result.output
    assert "1.235 KWD" in result.output and "unexpected error" not in result.output, result.output
    invoices = stored(engine)
    assert invoices["org-kwd"]["stripe_invoice_id"] is None and invoices["org-kwd"]["stripe_customer_id"] is None
    assert invoices["org-jpy"]["stripe_status"] == "sent"
    assert [inv["currency"] for inv in fake_stripe.invoices.values()] == ["jpy"]
    assert len(fake_stripe.customers) == 1


def test_a_known_customer_costs_three_stripe_calls_and_a_changed_one_is_updated(env, engine, fake_stripe) -> None:
    from tests.data import add_usage, utc

    only_stripe = {**env, "INVOICE_ENABLE_S3": "false", "INVOICE_ENABLE_EMAIL": "false"}
    assert run(only_stripe).exit_code == 0  # January: creates the customers
    with engine.begin() as conn:
        for org in ("org-1", "org-2", "org-3"):
            add_usage(conn, org, "api_calls", "10", utc(2024, 2, 10, 10))
        conn.execute(text("UPDATE organizations SET name = 'Customer One GmbH', email = 'ap@one.example' "
                          "WHERE id = 'org-1'"))
    before = len(fake_stripe.requests)

    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=only_stripe)

    assert february.exit_code == 0, february.output
    calls = [(r.method, re.sub(r"/(in|cus)_\w+", "/{id}", r.path)) for r in fake_stripe.requests[before:]]
    assert sorted(calls) == sorted(
        [("POST", "/v1/invoices"), ("POST", "/v1/invoices/{id}/add_lines"), ("POST", "/v1/invoices/{id}/send")] * 3
        + [("POST", "/v1/customers/{id}")])  # three calls an invoice, whatever its lines; one update
    renamed = next(c for c in fake_stripe.customers.values() if c["metadata"]["organization_id"] == "org-1")
    assert (renamed["name"], renamed["email"]) == ("Customer One GmbH", "ap@one.example")


def test_completing_an_older_invoice_does_not_turn_the_stripe_customer_back_to_an_old_email(env, engine,
                                                                                          fake_stripe) -> None:
    """deliveries.md: the organization's Stripe customer is updated when its name or e-mail changed,
    to the organization's details as they are now, never to the bill-to of an invoice issued before
    the change: completed late, such an invoice would otherwise write the old address back onto
    the customer, and Stripe would send the organization's invoices, reminders and receipts to the
    address the customer asked to stop using."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count) "
                          "VALUES ('org-1', 'api_calls', '2024-02-10T10:00Z', 5, 1)"))
    # January: issued and e-mailed while Stripe was off (or failing): its Stripe step is pending.
    assert run({**env, "INVOICE_ENABLE_STRIPE": "false"}, "--org", "org-1").exit_code == 0
    with engine.begin() as conn:  # the customer moves to a new billing address
        conn.execute(text("UPDATE organizations SET email = 'new-billing@example.com' WHERE id = 'org-1'"))
    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02", "--org", "org-1"], env=env)
    assert february.exit_code == 0, february.output
    [customer] = fake_stripe.customers.values()
    assert customer["email"] == "new-billing@example.com"

    # Later, the January run is completed (Stripe back on).
    assert run(env, "--org", "org-1").exit_code == 0

    [customer] = fake_stripe.customers.values()
    assert customer["email"] == "new-billing@example.com", "Stripe's customer went back to the old address"
    with engine.connect() as conn:  # and January's invoice is now sent in Stripe, to that customer
        january = conn.execute(text("SELECT stripe_invoice_id, stripe_status FROM invoices "
                                    "WHERE organization_id = 'org-1' AND billing_month = '2024-01-01'")).one()
    assert january.stripe_status == "sent"
    assert fake_stripe.invoices[january.stripe_invoice_id]["customer"] == customer["id"]


def test_an_email_changed_back_and_forth_within_a_day_reaches_stripe_every_time(env, engine, fake_stripe) -> None:
    """Each change of the customer is its own Stripe update, under a key of its own: A, B, A, B
    within Stripe's ~24 h key lifetime is not the replay of the first B (which would leave Stripe
    on A while billing records B, until the next change)."""
    from tests.data import add_usage, utc

    only_stripe = {**env, "INVOICE_ENABLE_S3": "false", "INVOICE_ENABLE_EMAIL": "false"}
    assert run(only_stripe, "--org", "org-1").exit_code == 0  # January: the customer, at the first address
    first = next(iter(fake_stripe.customers.values()))["email"]
    for month, email in (("2024-02", "b@one.example"), ("2024-03", first), ("2024-04", "b@one.example")):
        with engine.begin() as conn:
            add_usage(conn, "org-1", "api_calls", "10", utc(int(month[:4]), int(month[5:]), 10, 10))
            conn.execute(text("UPDATE organizations SET email = :e WHERE id = 'org-1'"), {"e": email})
        result = runner.invoke(app, ["invoice-monthly", "--month", month, "--org", "org-1"], env=only_stripe)
        assert result.exit_code == 0, result.output

        [customer] = fake_stripe.customers.values()
        assert customer["email"] == email, month
    updates = fake_stripe.requests_for("POST", f"/v1/customers/{customer['id']}")
    assert len(updates) == 3 and not any(r.replayed for r in updates)


def test_a_service_that_is_down_is_given_up_after_a_few_failures_and_the_next_run_completes(
        env, engine, mail, fake_stripe) -> None:
    from tests.data import add_org, add_usage, set_plan

    with engine.begin() as conn:
        for n in range(4, 11):
            add_org(conn, f"org-{n:02d}")
            set_plan(conn, f"org-{n:02d}", "pro")
            add_usage(conn, f"org-{n:02d}", "api_calls", "5")
    fake_stripe.fail_next(10_000, 500)  # Stripe is down for this run
    down = {**env, "DELIVERY_MAX_ATTEMPTS": "2", "DELIVERY_CIRCUIT_BREAKER_FAILURES": "3"}

    result = run(down)

    assert result.exit_code == ExitCode.PARTIAL
    # Three customer creations failed (two attempts each); then Stripe was not called again.
    assert len(fake_stripe.requests) == 3 * 2
    assert result.output.count("error_stripe=") == 10
    assert result.output.count("Stripe failed 3 times in a row in this run: not called again") == 7
    assert len(mail.received) == 0  # the e-mail follows Stripe: never told about an invoice not in Stripe
    assert all(inv["s3_key"] for inv in stored(engine).values())  # what came before is done

    fake_stripe.reset()
    assert run(env).exit_code == 0
    assert all(inv["stripe_status"] == "sent" and inv["emailed_at"] for inv in stored(engine).values())


def test_an_smtp_server_that_goes_quiet_after_the_message_is_not_sent_it_again_in_the_run(env, engine, mail) -> None:
    import time

    slow = {"first": True}

    def hold_the_answer(_received) -> None:
        if slow.pop("first", False):
            time.sleep(2.5)  # the message is stored; the "250" comes after the client gave up

    mail.on_message = hold_the_answer
    only_mail = {**env, "INVOICE_ENABLE_STRIPE": "false", "INVOICE_ENABLE_S3": "false",
                 "DELIVERY_TIMEOUT_SECONDS": "1"}

    first = run(only_mail)

    assert first.exit_code == ExitCode.PARTIAL
    assert "did not confirm the message it was sent" in first.output and "not sent again in this run" in first.output
    assert len(mail.received) == 3  # one each: the quiet one was not retried
    unconfirmed = [org for org, inv in stored(engine).items() if inv["emailed_at"] is None]
    assert len(unconfirmed) == 1

    again = run(only_mail)  # the next run sends it again, with the same Message-ID
    assert again.exit_code == 0
    ids = [m.message["Message-ID"] for m in mail.received]
    assert len(ids) == 4 and len(set(ids)) == 3


LINE_PLANS = """
[[plan]]
id = "one-line"
name = "One line"
currency = "USD"

  [[plan.price]]
  metric = "m1"
  model = "per_unit"
  unit_price = 0.5

[[plan]]
id = "five-lines"
name = "Five lines"
currency = "USD"
""" + "".join(f"""
  [[plan.price]]
  metric = "m{n}"
  model = "per_unit"
  unit_price = 0.{n}
""" for n in range(1, 6))


def test_stripe_calls_per_invoice_are_three_for_a_known_customer_and_four_for_a_new_one_whatever_the_lines(
        db_url, engine, s3, mail, fake_stripe, clean_env, tmp_path) -> None:
    """The exact Stripe requests of each invoice, in order, for an invoice of 1 line and one of 5:
    a new customer costs the customer, the draft, all lines at once and send (which finalizes);
    a known one (its id stored, the customer at Stripe, name and e-mail unchanged) the last three.
    No read on the happy path."""
    from tests.data import add_org, add_usage, set_plan, utc

    plans = tmp_path / "plans.toml"
    plans.write_text(LINE_PLANS)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        for org, plan, metrics in (("org-a", "one-line", 1), ("org-b", "five-lines", 5)):
            add_org(conn, org)
            set_plan(conn, org, plan)
            for month in (1, 2):
                for n in range(1, metrics + 1):
                    add_usage(conn, org, f"m{n}", str(10 * n), utc(2024, month, 10, 10))
    only_stripe = {**peer_env(db_url, s3, mail, fake_stripe), "INVOICE_ENABLE_S3": "false",
                   "INVOICE_ENABLE_EMAIL": "false"}  # INVOICE_CONCURRENCY=1: one organization after the other

    def calls(since: int) -> list[tuple[str, str]]:
        return [(r.method, re.sub(r"/(in|cus)_\w+", "/{id}", r.path)) for r in fake_stripe.requests[since:]]

    def lines_added(since: int) -> list[int]:
        return [len(r.params["lines"]) for r in fake_stripe.requests[since:] if r.path.endswith("/add_lines")]

    invoice_calls = [("POST", "/v1/invoices"), ("POST", "/v1/invoices/{id}/add_lines"),
                     ("POST", "/v1/invoices/{id}/send")]

    january = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=only_stripe)
    assert january.exit_code == 0, january.output
    print("new customers, 1 and 5 lines:", calls(0))
    assert calls(0) == ([("POST", "/v1/customers")] + invoice_calls) * 2  # new customers: 4 calls each
    assert lines_added(0) == [1, 5]
    assert all(r.status == 200 and not r.replayed for r in fake_stripe.requests)

    before = len(fake_stripe.requests)
    february = runner.invoke(app, ["invoice-monthly", "--month", "2024-02"], env=only_stripe)
    assert february.exit_code == 0, february.output
    print("known customers, 1 and 5 lines:", calls(before))
    assert calls(before) == invoice_calls * 2  # known customers: 3 calls each
    assert lines_added(before) == [1, 5]
    assert all(r.status == 200 and not r.replayed for r in fake_stripe.requests[before:])
    assert len(fake_stripe.customers) == 2
    assert sorted(len(inv["lines"]["data"]) for inv in fake_stripe.invoices.values()) == [1, 1, 5, 5]
    assert {inv["status"] for inv in fake_stripe.invoices.values()} == {"open"}
    assert sorted(map(len, fake_stripe.sent_invoices.values())) == [1, 1, 1, 1]


def test_an_invoice_of_more_lines_than_stripe_takes_fails_before_anything_is_made_in_stripe(
        db_url, engine, s3, mail, fake_stripe, clean_env, tmp_path) -> None:
    """Stripe takes at most 250 items on an invoice. An invoice of 251 lines is issued, rendered and
    uploaded, then fails its Stripe step with a message saying so, before any call: no customer, no
    empty draft left in Stripe, no e-mail; the organization beside it is delivered (exit 6)."""
    from tests.data import add_org, add_usage, set_plan, utc

    plans = tmp_path / "plans.toml"
    plans.write_text(LINE_PLANS + '\n[[plan]]\nid = "many-lines"\nname = "Many lines"\ncurrency = "USD"\n' + "".join(
        f'\n  [[plan.price]]\n  metric = "m{n}"\n  model = "per_unit"\n  unit_price = 0.01\n' for n in range(1, 252)))
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        add_org(conn, "org-many")
        set_plan(conn, "org-many", "many-lines")
        for n in range(1, 252):
            add_usage(conn, "org-many", f"m{n}", "1", utc(2024, 1, 10, 10))
        add_org(conn, "org-few")
        set_plan(conn, "org-few", "five-lines")
        add_usage(conn, "org-few", "m1", "10", utc(2024, 1, 10, 10))

    result = runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=peer_env(db_url, s3, mail, fake_stripe))

    assert result.exit_code == ExitCode.PARTIAL, result.output
    assert "251 lines" in result.output and "at most 250" in result.output, result.output
    assert "first fix what a line above names" in result.output  # a rerun alone would fail the same way
    invoices = stored(engine)
    assert invoices["org-many"]["s3_uploaded_at"] is not None and invoices["org-many"]["stripe_invoice_id"] is None
    assert invoices["org-many"]["emailed_at"] is None and invoices["org-many"]["stripe_customer_id"] is None
    assert [inv["metadata"]["invoice_number"] for inv in fake_stripe.invoices.values()] == [invoices["org-few"]["number"]]
    assert len(fake_stripe.customers) == 1
    assert [m.message["To"].addresses[0].addr_spec for m in mail.received] == ["org-few@example.com"]


def test_the_email_prints_amounts_as_the_pdf_does_and_says_how_to_pay(env, engine, mail) -> None:
    only_mail = {**env, "INVOICE_ENABLE_S3": "false", "INVOICE_ENABLE_STRIPE": "false", "INVOICE_LOCALE": "de",
                 "INVOICE_PAYMENT_INSTRUCTIONS": "Überweisung an Nimbus Metering GmbH|IBAN DE89 3704 0044 0532 0130 00"}
    result = run(only_mail, "--org", "org-1")

    assert result.exit_code == 0, result.output
    total = stored(engine)["org-1"]["total"]
    printed = f"{total:.2f}".replace(".", ",") + " $"  # de: decimal comma, the symbol after
    message = mail.received[-1].message
    plain = message.get_body(("plain",)).get_content().replace("\xa0", " ").replace("\r\n", "\n")
    html = message.get_body(("html",)).get_content()
    assert f"Total due:      {printed}" in plain
    assert message["Subject"].replace("\xa0", " ").endswith(printed)
    assert "How to pay:\n  Überweisung an Nimbus Metering GmbH\n  IBAN DE89 3704 0044 0532 0130 00" in plain
    assert "<b>How to pay</b><br>Überweisung an Nimbus Metering GmbH<br>IBAN DE89" in html


def test_an_anchored_period_reaches_stripe_and_the_email_with_its_days(env, engine, s3, mail, fake_stripe) -> None:
    """org-1 bills from the 15th: its invoice of January is 15 Jan - 14 Feb (its usage of 15 January,
    10:00 is in it); the others keep the calendar month."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET billing_anchor_day = 15 WHERE id = 'org-1'"))
        conn.execute(text("UPDATE organizations SET billing_anchor_previous = NULL, billing_anchor_changed_at = NULL "
                          "WHERE id = 'org-1'"))  # anchored from the start (as if set when it was created)
    result = run(env)
    assert result.exit_code == 0, result.output
    invoices = stored(engine)
    january = (int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()), int(datetime(2024, 2, 1, tzinfo=UTC).timestamp()))
    anchored = (int(datetime(2024, 1, 15, tzinfo=UTC).timestamp()), int(datetime(2024, 2, 15, tzinfo=UTC).timestamp()))
    for org_id, inv in invoices.items():
        lines = fake_stripe.invoices[inv["stripe_invoice_id"]]["lines"]["data"]
        expected = anchored if org_id == "org-1" else january
        assert lines and all((line["period"]["start"], line["period"]["end"]) == expected for line in lines)
    subjects = {item.recipients[0].split("@")[0]: item.message["Subject"] for item in mail.received}
    assert subjects["org-1"].startswith(f"Invoice {invoices['org-1']['number']} for 15 Jan – 14 Feb 2024: ")
    assert subjects["org-2"].startswith(f"Invoice {invoices['org-2']['number']} for 2024-01: ")
    body = next(item.message for item in mail.received if item.recipients == ["org-1@example.com"])
    text_part = body.get_body(("plain",)).get_content()
    assert "Billing period: 15 Jan – 14 Feb 2024" in text_part
