"""Credit notes: voiding an invoice the customer was sent issues a credit note (its own gapless
numbers), delivered like an invoice: PDF, S3, Stripe (void while open, credit note once paid) and
e-mail, exactly once, resumed by the next invoicing run. A draft-only invoice is simply voided.
Real PostgreSQL, the real S3, SMTP and Stripe peers."""

from __future__ import annotations

import hashlib
import io
import json
from decimal import Decimal

import pytest
import stripe
from pypdf import PdfReader
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.data import add_usage, table_snapshot, utc
from tests.peers.fixtures import STRIPE_KEY, peer_env
from tests.peers.stripe_server import FakeStripeServer
from tests.test_json_output import assert_valid

runner = CliRunner()
FIRST = "INV-2024-01-000001"  # org-1's January invoice: 100 API calls on the "pro" plan


@pytest.fixture
def env(billed, s3, mail, fake_stripe, clean_env) -> dict[str, str]:
    return peer_env(billed, s3, mail, fake_stripe, DELIVERY_MAX_RETRY_SECONDS="5")


def invoice_month(env: dict[str, str], *args: str, month: str = "2024-01"):
    return runner.invoke(app, ["invoice-monthly", "--month", month, *args], env=env)


def void(env: dict[str, str], number: str = FIRST, *args: str, reason: str = "Billed to the wrong account"):
    return runner.invoke(app, ["invoices", "void", number, "--reason", reason, *args], env=env)


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def credit_notes(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT c.*, i.number AS invoice_number FROM credit_notes c JOIN invoices i ON i.id = c.invoice_id "
            "ORDER BY c.number")).mappings()]


def invoice(engine, number: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM invoices WHERE number = :n"), {"n": number}).mappings().one())


def stripe_client(fake: FakeStripeServer) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake.base_url}, max_network_retries=0)


def test_voiding_a_sent_invoice_delivers_a_credit_note_pdf_s3_stripe_and_email(env, engine, s3, mail,
                                                                              fake_stripe) -> None:
    first = invoice_month(env)
    assert first.exit_code == 0, first.output
    sent = invoice(engine, FIRST)
    assert sent["stripe_status"] == "sent" and sent["emailed_at"] is not None
    mail.received.clear()

    result = void(env, FIRST, "--yes", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert_valid("invoices-void", document)
    assert document["invoice"] == {"number": FIRST, "organization_id": "org-1", "currency": "USD", "total": "11.00",
                                   "sent": True, "reason": "Billed to the wrong account"}
    assert document["credit_note"] == {"number": "CN-2024-01-000001", "total": "-11.00",
                                       "done": ["pdf", "s3", "stripe", "email"]}
    assert document["counts"] == {"invoices_voided": 1, "credit_notes": 1}
    voided = invoice(engine, FIRST)
    assert (voided["status"], voided["void_reason"], voided["stripe_reversal"]) == (
        "void", "Billed to the wrong account", "voided")
    [note] = credit_notes(engine)
    assert (note["number"], note["invoice_number"], note["organization_id"], note["total"], note["reason"]) == (
        "CN-2024-01-000001", FIRST, "org-1", Decimal("-11.00"), "Billed to the wrong account")
    with engine.connect() as conn:
        lines = conn.execute(text("SELECT description, quantity, unit_price, amount FROM credit_note_lines "
                                  "ORDER BY line_no")).all()
    assert [tuple(line) for line in lines] == [
        ("Pro plan, monthly fee", Decimal("1"), Decimal("-10.00"), Decimal("-10.00")),
        ("API calls: units 1 to 1,000", Decimal("100"), Decimal("-0.01"), Decimal("-1.00"))]

    # S3: the credit note's PDF beside the invoice's, the bytes whose hash was recorded.
    assert note["s3_key"] == "invoices/2024/01/org-1/CN-2024-01-000001.pdf"
    body = s3.client().get_object(Bucket=s3.bucket, Key=note["s3_key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == note["pdf_sha256"]
    printed = pdf_text(body)
    for expected in ("CREDIT NOTE", "Credit note number CN-2024-01-000001", "Credits invoice INV-2024-01-000001",
                     "Credit note for INV-2024-01-000001", "Reason: Billed to the wrong account",
                     "Pro plan, monthly fee 1 -10.00 -10.00", "API calls: units 1 to 1,000 100 -0.01 -1.00",
                     "Total credited -$11.00", "Customer 1", "Nimbus Metering GmbH"):
        assert expected in printed, (expected, printed)
    assert "Due date" not in printed and "Payment is due" not in printed

    # Stripe: the invoice was open (sent, not paid): voided there, nothing left to pay.
    remote = fake_stripe.invoices[sent["stripe_invoice_id"]]
    assert (remote["status"], remote["amount_remaining"]) == ("void", 0)
    assert fake_stripe.credit_notes == {}

    # The e-mail the customer receives: the credit note attached, under its own Message-ID.
    [received] = mail.received
    message = received.message
    assert received.recipients == ["org-1@example.com"]
    assert message["Subject"] == "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00"
    assert message["Message-ID"] == "<CN-2024-01-000001.org-1@example.cloud>" == note["email_message_id"]
    plain = message.get_body(("plain",)).get_content()
    assert "invoice INV-2024-01-000001 from Nimbus Metering GmbH for 2024-01 is cancelled" in plain
    assert "Amount credited:     -$11.00" in plain
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "CN-2024-01-000001.pdf" and attachment.get_content() == body

    # Reconcile counts it, and finds it delivered.
    reconciled = runner.invoke(app, ["reconcile", "--month", "2024-01", "--json"], env=env)
    summary = json.loads(reconciled.stdout)
    assert_valid("reconcile", summary)
    assert summary["counts"]["credit_notes"] == 1 and "credit_note_undelivered" not in summary["errors"]

    # The next run of the month invoices org-1 again from its usage (a void cancels the document,
    # not the usage), and leaves the credit note alone: no second credit note, upload, Stripe call
    # or e-mail for it.
    with engine.connect() as conn:
        before = table_snapshot(conn, "credit_notes", "credit_note_lines")
    again = invoice_month(env)
    assert again.exit_code == 0, again.output
    assert "id=org-1 status=invoiced number=INV-2024-01-000004" in again.output, again.output
    with engine.connect() as conn:
        assert table_snapshot(conn, "credit_notes", "credit_note_lines") == before
    assert [m.message["Subject"] for m in mail.received] == [
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00",
        "Invoice INV-2024-01-000004 for 2024-01: $11.00"]
    assert len(fake_stripe.requests_for("POST", f"/v1/invoices/{sent['stripe_invoice_id']}/void")) == 1
    # And a rerun after that changes nothing at all.
    with engine.connect() as conn:
        before = table_snapshot(conn, "credit_notes", "credit_note_lines", "invoices")
    calls = len(fake_stripe.requests)
    assert invoice_month(env).exit_code == 0
    with engine.connect() as conn:
        assert table_snapshot(conn, "credit_notes", "credit_note_lines", "invoices") == before
    assert len(mail.received) == 2
    assert [r.path for r in fake_stripe.requests[calls:] if r.method == "POST"] == []


def test_a_paid_invoice_gets_a_stripe_credit_note_for_its_full_amount(env, engine, mail, fake_stripe) -> None:
    assert invoice_month(env).exit_code == 0
    sent = invoice(engine, FIRST)
    stripe_client(fake_stripe).v1.invoices.pay(sent["stripe_invoice_id"], {"paid_out_of_band": True})

    result = void(env, FIRST, "--yes", reason="Service not delivered")

    assert result.exit_code == 0, result.output
    assert "CN-2024-01-000001" in result.output
    [stripe_note] = fake_stripe.credit_notes.values()
    assert (stripe_note["invoice"], stripe_note["amount"], stripe_note["type"], stripe_note["reason"]) == (
        sent["stripe_invoice_id"], 1100, "post_payment", "order_change")
    assert stripe_note["memo"] == f"Invoice {FIRST} is cancelled. Credit note CN-2024-01-000001."
    assert stripe_note["metadata"] == {"billing_invoice_id": str(sent["id"])}
    customer = fake_stripe.customers[fake_stripe.invoices[sent["stripe_invoice_id"]]["customer"]]
    assert customer["balance"] == -1100  # credited to the customer, for the next invoice
    voided = invoice(engine, FIRST)
    assert (voided["stripe_reversal"], voided["stripe_credit_note_id"]) == ("credited", stripe_note["id"])


def test_a_draft_only_invoice_is_simply_voided(env, engine, s3, mail, fake_stripe) -> None:
    quiet = {**env, "INVOICE_ENABLE_EMAIL": "false", "INVOICE_ENABLE_STRIPE": "false"}
    assert invoice_month(quiet).exit_code == 0  # issued and uploaded, never sent to anyone

    result = void(env, FIRST, "--yes", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert_valid("invoices-void", document)
    assert document["credit_note"] is None and document["invoice"]["sent"] is False
    assert invoice(engine, FIRST)["status"] == "void"
    assert credit_notes(engine) == [] and mail.received == [] and fake_stripe.requests == []
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert not any("CN-" in key for key in keys)


def test_voiding_refuses_what_cannot_be_voided_with_one_line_and_its_exit_code(env, engine, fake_stripe) -> None:
    assert invoice_month(env).exit_code == 0

    never = void(env, "INV-2024-01-000099", "--yes")
    assert never.exit_code == ExitCode.REFUSED
    assert "invoice INV-2024-01-000099 was never issued: there is nothing to void" in never.output

    not_a_number = void(env, "2024-01-000001", "--yes")
    assert not_a_number.exit_code == ExitCode.USAGE
    assert "'2024-01-000001' is not an invoice number: expected INV-YYYY-MM-NNNNNN" in not_a_number.output

    empty_reason = void(env, FIRST, "--yes", reason="  ")
    assert empty_reason.exit_code == ExitCode.USAGE and "--reason is empty" in empty_reason.output

    unconfirmed = void(env, FIRST)  # CliRunner's stdin is not a terminal
    assert unconfirmed.exit_code == ExitCode.USAGE
    assert f"voiding {FIRST} needs --yes outside a terminal (nothing was done)" in unconfirmed.output
    assert invoice(engine, FIRST)["status"] == "issued" and credit_notes(engine) == []

    assert void(env, FIRST, "--yes").exit_code == 0
    twice = void(env, FIRST, "--yes", "--json")
    assert twice.exit_code == ExitCode.REFUSED
    assert f"invoice {FIRST} is void already" in twice.output and "its credit note is CN-2024-01-000001" in twice.output
    refused = json.loads(twice.stdout)
    assert_valid("invoices-void", refused)
    assert refused["outcome"] == "failed" and "void already" in refused["message"] and "invoice" not in refused
    assert len(credit_notes(engine)) == 1


def test_void_does_nothing_while_dry_run_is_set(env, engine, mail, fake_stripe) -> None:
    assert invoice_month(env).exit_code == 0
    sent = len(mail.received)
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT count(*) FROM job_runs")).scalar_one()

    # DRY_RUN: "Compute and report everything, write nothing, call no outside service."
    result = void(env | {"DRY_RUN": "true"}, FIRST, "--yes", reason="preview")

    assert result.exit_code == ExitCode.REFUSED, result.output
    assert f"DRY_RUN is set: invoice {FIRST} not voided" in result.output
    with engine.connect() as conn:
        notes = conn.execute(text("SELECT count(*) FROM credit_notes")).scalar_one()
        assert conn.execute(text("SELECT count(*) FROM job_runs")).scalar_one() == runs
    assert (invoice(engine, FIRST)["status"], notes, len(mail.received)) == ("issued", 0, sent)


def test_regenerating_a_sent_invoice_credits_it_before_the_replacement_goes_out(env, engine, s3, mail,
                                                                               fake_stripe) -> None:
    assert invoice_month(env).exit_code == 0
    mail.received.clear()
    with engine.begin() as conn:
        add_usage(conn, "org-1", "api_calls", "400", hour=utc(2024, 1, 20, 8))

    result = invoice_month(env, "--org", "org-1", "--regenerate")

    assert result.exit_code == 0, result.output
    assert "done=issued,stripe_reversed,credit_note,pdf,s3,stripe,email" in result.output, result.output
    [note] = credit_notes(engine)
    assert (note["number"], note["invoice_number"], note["reason"], note["total"]) == (
        "CN-2024-01-000001", FIRST, "regenerated", Decimal("-11.00"))
    # The customer hears of the credit note first, then of the replacement.
    assert [m.message["Subject"] for m in mail.received] == [
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00",
        "Invoice INV-2024-01-000004 for 2024-01: $15.00"]
    body = s3.client().get_object(Bucket=s3.bucket, Key=note["s3_key"])["Body"].read()
    assert "It is replaced by invoice INV-2024-01-000004." in pdf_text(body)


def test_the_replacement_never_reaches_the_customer_before_the_credit_note_of_the_invoice_it_replaces(
        env, engine, mail, fake_stripe) -> None:
    """deliveries.md: "After a regeneration the customer receives the credit note first, then the
    replacement." When the credit note's delivery fails (here its e-mail is refused once; a failed
    credit note PDF or S3 upload does the same), the replacement is issued, rendered and uploaded,
    but neither sent in Stripe nor e-mailed: else the customer would hold two invoices for one
    month, the old one never cancelled in writing, and could pay both (a bank transfer does not
    ask Stripe). The next run delivers the credit note, then the replacement."""
    assert invoice_month(env).exit_code == 0
    mail.received.clear()
    with engine.begin() as conn:
        add_usage(conn, "org-1", "api_calls", "400", hour=utc(2024, 1, 20, 8))

    mail.fail_next(1, 550)  # the first message of the regeneration, the credit note's, is refused
    result = invoice_month(env, "--org", "org-1", "--regenerate")

    assert result.exit_code == ExitCode.PARTIAL, result.output
    subjects = [m.message["Subject"] for m in mail.received]
    assert subjects == [], f"the replacement went out without its credit note: {subjects}"
    replacement = invoice(engine, "INV-2024-01-000004")
    assert replacement["s3_uploaded_at"] is not None and replacement["stripe_invoice_id"] is None
    assert "is neither sent in Stripe nor e-mailed until credit note CN-2024-01-000001" in result.output

    rerun = invoice_month(env)

    assert rerun.exit_code == 0, rerun.output
    assert [m.message["Subject"] for m in mail.received] == [
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00",
        "Invoice INV-2024-01-000004 for 2024-01: $15.00"]
    assert invoice(engine, "INV-2024-01-000004")["stripe_status"] == "sent"


def test_credit_note_numbers_are_gapless_per_month_even_when_a_void_rolls_back(env, engine) -> None:
    from billing_cli.db import invoice_store

    assert invoice_month(env).exit_code == 0
    with engine.connect() as conn:  # a void whose transaction fails after taking a number
        transaction = conn.begin()
        assert invoice_store.void_invoice(conn, invoice(engine, "INV-2024-01-000002")["id"], "test")
        assert conn.execute(text("SELECT number FROM credit_notes")).scalar_one() == "CN-2024-01-000001"
        transaction.rollback()

    for number in ("INV-2024-01-000003", "INV-2024-01-000001", "INV-2024-01-000002"):
        assert void(env, number, "--yes").exit_code == 0

    assert [(n["number"], n["invoice_number"]) for n in credit_notes(engine)] == [
        ("CN-2024-01-000001", "INV-2024-01-000003"), ("CN-2024-01-000002", FIRST),
        ("CN-2024-01-000003", "INV-2024-01-000002")]
    with engine.connect() as conn:
        with pytest.raises(Exception, match="uq_credit_notes_one_per_invoice"):
            conn.execute(text("INSERT INTO credit_notes (number, invoice_id, organization_id, period_start, currency, "
                              "subtotal, total, reason, issue_date) SELECT 'CN-X', invoice_id, organization_id, "
                              "period_start, currency, 0, 0, 'again', issue_date FROM credit_notes LIMIT 1"))


def test_an_interrupted_credit_note_is_completed_by_the_next_run(env, engine, s3, mail, fake_stripe) -> None:
    assert invoice_month(env).exit_code == 0
    mail.received.clear()

    broken = void({**env, "INVOICE_S3_BUCKET": "no-such-bucket"}, FIRST, "--yes", "--json")

    assert broken.exit_code == ExitCode.PARTIAL, broken.output
    document = json.loads(broken.stdout)
    assert_valid("invoices-void", document)
    assert (document["outcome"], document["errors"], document["credit_note"]["done"]) == ("partial", {"s3": 1}, ["pdf"])
    assert "s3: credit note CN-2024-01-000001:" in broken.stderr and "NoSuchBucket" in broken.stderr
    [note] = credit_notes(engine)
    assert note["pdf_sha256"] is not None and note["s3_uploaded_at"] is None and note["emailed_at"] is None
    assert mail.received == []  # the later steps wait for S3, as an invoice's do
    reconciled = json.loads(runner.invoke(app, ["reconcile", "--month", "2024-01", "--json"], env=env).stdout)
    assert reconciled["errors"]["credit_note_undelivered"] == 1

    rerun = invoice_month(env)

    assert rerun.exit_code == 0, rerun.output
    [note] = credit_notes(engine)
    assert note["s3_uploaded_at"] is not None and note["emailed_at"] is not None
    assert [m.message["Subject"] for m in mail.received] == [  # the credit note first, then the new invoice
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00",
        "Invoice INV-2024-01-000004 for 2024-01: $11.00"]
    assert fake_stripe.invoices[invoice(engine, FIRST)["stripe_invoice_id"]]["status"] == "void"


def test_a_churned_organizations_void_that_stripe_refused_is_finished_by_the_next_run(env, engine, mail,
                                                                                     fake_stripe) -> None:
    """operations.md: "A delivery step that fails exits 6; the next `billing invoice-monthly` run of
    any month completes it", also for a customer who left, whom no run invoices any more (inactive,
    the voided invoice's month beyond LATE_USAGE_MONTHS; sooner, the void's own usage brings the
    organization back in): its Stripe invoice is voided (else it stays payable, chased by Stripe)
    and its credit note e-mailed, and nothing is billed to it."""
    env = {**env, "DELIVERY_MAX_RETRY_SECONDS": "2", "DELIVERY_MAX_ATTEMPTS": "2"}
    assert invoice_month(env).exit_code == 0
    sent = invoice(engine, FIRST)
    assert sent["stripe_status"] == "sent"
    with engine.begin() as conn:  # the customer left at the end of January
        conn.execute(text("UPDATE organizations SET status = 'inactive' WHERE id = 'org-1'"))
        conn.execute(text("UPDATE organizations SET status_changed_at = '2024-01-31T12:00Z' WHERE id = 'org-1'"))
    mail.received.clear()

    fake_stripe.fail_next(50, 500)  # Stripe is down during the void
    voided = void(env, FIRST, "--yes", reason="Billed twice")
    fake_stripe.clear_faults()
    assert voided.exit_code == ExitCode.PARTIAL, voided.output
    assert fake_stripe.invoices[sent["stripe_invoice_id"]]["status"] == "open"

    # The next scheduled run, months later (January is beyond LATE_USAGE_MONTHS=3 of it).
    may = invoice_month(env, month="2024-05")

    assert may.exit_code == 0, may.output
    assert "id=org-1 status=nothing_to_bill final=true done=stripe_reversed,credit_note" in may.output, may.output
    assert fake_stripe.invoices[sent["stripe_invoice_id"]]["status"] == "void", "the voided invoice is still payable"
    [note] = credit_notes(engine)
    assert note["emailed_at"] is not None, "the credit note never reaches the customer"
    assert [m.message["Subject"] for m in mail.received if "org-1@" in m.message["To"]] == [
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00"]
    with engine.connect() as conn:  # nothing billed to it
        assert conn.execute(text("SELECT count(*) FROM invoices WHERE organization_id = 'org-1' "
                                 "AND billing_month > '2024-01-01'")).scalar_one() == 0

    # The runs after it, even one aimed at the organization, find nothing more to do for it.
    assert invoice_month(env, month="2024-06").exit_code == 0
    aimed = invoice_month(env, "--org", "org-1", month="2024-06")
    assert "found organizations=0" in aimed.output, aimed.output
    assert "org-1" not in aimed.output.replace("--org org-1", "")


def test_voiding_waits_for_no_run_an_invoicing_run_holding_the_organization_makes_it_exit_7(env, engine,
                                                                                            billed) -> None:
    """The void holds the organization with the same advisory lock as every invoicing run (of any
    month or shard): while another process holds it, nothing is voided."""
    from billing_cli.db.run_store import lock_key

    assert invoice_month(env).exit_code == 0
    with engine.connect() as holder:  # as an invoicing run holds org-1 while it handles it
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key("organization:org-1")})
        busy = void(env, FIRST, "--yes")
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key("organization:org-1")})

    assert busy.exit_code == ExitCode.ALREADY_RUNNING, busy.output
    assert "another run is handling organization org-1 right now: invoice INV-2024-01-000001 was not voided" \
        in busy.output
    assert invoice(engine, FIRST)["status"] == "issued" and credit_notes(engine) == []
    assert void(env, FIRST, "--yes").exit_code == 0  # once the run let go


def test_on_a_terminal_the_void_asks_first(env, engine, tmp_path) -> None:
    """On a terminal the command shows what it will do and waits for y/N; "n" changes nothing."""
    import os
    import pty
    import select
    import subprocess

    from tests.conftest import BILLING, billing_subprocess_env

    assert invoice_month(env).exit_code == 0
    process_env = billing_subprocess_env(**env, BILLING_ENV_FILE="/dev/null", AWS_ACCESS_KEY_ID="testing",
                                         AWS_SECRET_ACCESS_KEY="testing")

    def answer(reply: str) -> tuple[int, str]:
        controller, terminal = pty.openpty()
        proc = subprocess.Popen([*BILLING, "invoices", "void", FIRST, "--reason", "Duplicate"], env=process_env,
                                cwd=tmp_path, stdin=terminal, stderr=terminal, stdout=subprocess.PIPE, text=True)
        os.close(terminal)
        shown = b""
        while b"[y/N]" not in shown:
            ready, _, _ = select.select([controller], [], [], 60)
            assert ready, shown
            shown += os.read(controller, 4096)
        os.write(controller, reply.encode() + b"\n")
        proc.wait(timeout=120)
        os.close(controller)
        return proc.returncode, shown.decode()

    code, question = answer("n")
    assert code == ExitCode.REFUSED
    assert ("It was sent: a credit note is issued and sent to the customer (and its Stripe invoice voided or "
            "credited). The next invoicing run of 2024-01 invoices the organization again from its usage. "
            "Void invoice INV-2024-01-000001 of Customer 1 (org-1) for $11.00? [y/N]") in " ".join(question.split())
    assert invoice(engine, FIRST)["status"] == "issued" and credit_notes(engine) == []

    code, _ = answer("y")
    assert code == 0
    assert invoice(engine, FIRST)["status"] == "void" and [n["number"] for n in credit_notes(engine)] == [
        "CN-2024-01-000001"]


def test_a_credit_note_is_the_invoice_negated_in_any_locale_and_script() -> None:
    """Pure: the lines are the invoice's with negative unit prices and amounts (one function makes
    them), and the PDF prints them as the invoice's locale prints amounts, Unicode included."""
    from datetime import date

    from billing_cli.credit_notes import credit_lines
    from billing_cli.delivery.pdf import render_invoice
    from billing_cli.invoices import InvoiceDocument, Seller
    from billing_cli.periods import Month
    from billing_cli.pricing import InvoiceLine

    lines = (InvoiceLine("base_fee", "Grundgebühr", Decimal("1"), Decimal("1234.50"), Decimal("1234.50")),
             InvoiceLine("credit_applied", "Guthaben", Decimal("1"), Decimal("-34.50"), Decimal("-34.50")))
    credited = credit_lines(lines)
    assert [(line.quantity, line.unit_price, line.amount) for line in credited] == [
        (Decimal("1"), Decimal("-1234.50"), Decimal("-1234.50")), (Decimal("1"), Decimal("34.50"), Decimal("34.50"))]
    document = InvoiceDocument("CN-2024-02-000007", "org-łódź", "Łódź Świat sp. z o.o.", "a@example.pl",
                               Month(2024, 2), date(2024, 3, 5), date(2024, 3, 5), "EUR", credited, Decimal("-1200.00"),
                               credits="INV-2024-02-000031", reason="Doppelt berechnet – Kunde Łódź")
    printed = pdf_text(render_invoice(document, Seller("Nimbus Metering GmbH", ("Berlin",), locale="de")))
    for expected in ("CREDIT NOTE", "Credit note for INV-2024-02-000031", "Reason: Doppelt berechnet – Kunde Łódź",
                     "Grundgebühr 1 -1.234,50 -1.234,50", "Guthaben 1 34,50 34,50", "Total credited -1.200,00 €",
                     "Łódź Świat sp. z o.o.", "Credit note CN-2024-02-000007 Page 1 of 1"):
        assert expected in printed, (expected, printed)


def test_an_invoice_stripe_sent_before_a_crash_kept_us_from_recording_it_is_credited(env, engine, mail,
                                                                                     fake_stripe) -> None:
    """Stripe sent the invoice, and the process died before `stripe_status = 'sent'` (and so before
    the e-mail): by our records it was never sent, but Stripe holds it finalized, which only our send
    does. The void finds that out when it reverses it, and the customer gets a credit note."""
    assert invoice_month({**env, "INVOICE_ENABLE_EMAIL": "false"}).exit_code == 0
    with engine.begin() as conn:  # the state that crash leaves
        conn.execute(text("UPDATE invoices SET stripe_status = 'draft' WHERE number = :n"), {"n": FIRST})
    sent = invoice(engine, FIRST)
    assert fake_stripe.invoices[sent["stripe_invoice_id"]]["status"] == "open"

    result = void(env, FIRST, "--yes", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["invoice"]["sent"] is False  # what our records said when it was confirmed
    assert document["credit_note"] == {"number": "CN-2024-01-000001", "total": "-11.00", "done": ["pdf", "s3", "email"]}
    assert fake_stripe.invoices[sent["stripe_invoice_id"]]["status"] == "void"
    assert [m.message["Subject"] for m in mail.received] == [
        "Credit note CN-2024-01-000001 for invoice INV-2024-01-000001: -$11.00"]
