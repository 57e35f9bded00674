"""Regenerating an invoice that Stripe has: the Stripe invoice is voided (open), credited in full
(paid) or deleted (draft) before the replacement goes to Stripe or to the customer, exactly once,
whatever fails or crashes in between. Real Stripe SDK against the local Stripe peer."""

from __future__ import annotations

import json

import pytest
import stripe
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.data import add_usage, utc
from tests.peers.fixtures import STRIPE_KEY, peer_env
from tests.peers.stripe_server import FakeStripeServer

runner = CliRunner()


@pytest.fixture
def env(billed, s3, mail, fake_stripe, clean_env) -> dict[str, str]:
    return peer_env(billed, s3, mail, fake_stripe, DELIVERY_MAX_RETRY_SECONDS="5")


def run(env: dict[str, str], *args: str):
    return runner.invoke(app, ["invoice-monthly", "--month", "2024-01", *args], env=env)


def regenerate(env: dict[str, str], *args: str):
    return run(env, "--org", "org-1", "--regenerate", *args)


def invoices_of(engine, org_id: str = "org-1") -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("""
            SELECT id, number, status, total, stripe_invoice_id, stripe_status, stripe_reversal, stripe_credit_note_id,
                   emailed_at FROM invoices WHERE organization_id = :org ORDER BY id"""), {"org": org_id}).mappings()
        return [dict(r) for r in rows]


def more_usage(engine) -> None:
    """Usage that arrived after the month was invoiced: the reason to regenerate."""
    with engine.begin() as conn:
        add_usage(conn, "org-1", "api_calls", "400", hour=utc(2024, 1, 20, 8))


def stripe_client(fake: FakeStripeServer) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake.base_url}, max_network_retries=0)


def test_regenerating_voids_the_open_stripe_invoice_before_the_replacement_is_sent(env, engine, mail,
                                                                                  fake_stripe) -> None:
    assert run(env).exit_code == 0
    [old] = invoices_of(engine)
    more_usage(engine)

    preview = regenerate(env, "--dry-run", "--json")
    assert json.loads(preview.stdout)["plan"][0]["pending"][0] == "stripe_reversed"
    assert fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "open"  # a dry run touches nothing

    result = regenerate(env)

    assert result.exit_code == 0, result.output
    assert "done=issued,stripe_reversed,credit_note,pdf,s3,stripe,email" in result.output, result.output
    voided, new = invoices_of(engine)
    assert (voided["status"], voided["stripe_reversal"]) == ("void", "voided")
    remote = fake_stripe.invoices
    assert remote[old["stripe_invoice_id"]]["status"] == "void"
    assert remote[new["stripe_invoice_id"]]["status"] == "open" and remote[new["stripe_invoice_id"]]["number"] == \
        new["number"]
    assert [i["status"] for i in remote.values() if i["customer"] == remote[old["stripe_invoice_id"]]["customer"]] \
        .count("open") == 1  # never two invoices to pay for one period
    paths = [r.path for r in fake_stripe.requests if r.method == "POST" and r.status == 200]
    assert paths.index(f"/v1/invoices/{old['stripe_invoice_id']}/void") < \
        paths.index(f"/v1/invoices/{new['stripe_invoice_id']}/send")
    # The three first invoices, then the old one's credit note (it had been sent), then the replacement.
    assert len(mail.received) == 5 and mail.received[3].message["Subject"].startswith("Credit note CN-2024-01-000001")

    again = run(env)  # a rerun has nothing left to do, in Stripe either
    assert again.exit_code == 0 and "already_invoiced=3" in again.output
    assert len(fake_stripe.requests_for("POST", f"/v1/invoices/{old['stripe_invoice_id']}/void")) == 1


def test_a_paid_invoice_is_credited_in_full_once_and_the_credit_goes_to_the_replacement(env, engine,
                                                                                       fake_stripe) -> None:
    assert run(env).exit_code == 0
    [old] = invoices_of(engine)
    stripe_client(fake_stripe).v1.invoices.pay(old["stripe_invoice_id"], {"paid_out_of_band": True})
    more_usage(engine)

    result = regenerate(env)

    assert result.exit_code == 0, result.output
    voided, new = invoices_of(engine)
    [note] = fake_stripe.credit_notes.values()
    old_cents, new_cents = int(old["total"] * 100), int(new["total"] * 100)
    assert (voided["stripe_reversal"], voided["stripe_credit_note_id"]) == ("credited", note["id"])
    assert (note["invoice"], note["amount"], note["type"], note["reason"]) == (
        old["stripe_invoice_id"], old_cents, "post_payment", "order_change")
    assert note["memo"] == f"Invoice {old['number']} is replaced by invoice {new['number']}. Credit note CN-2024-01-000001."
    assert fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "paid"  # paid stays paid, credited
    # What was paid is taken off the replacement: the customer pays only the difference.
    replacement = fake_stripe.invoices[new["stripe_invoice_id"]]
    assert (replacement["total"], replacement["amount_due"]) == (new_cents, new_cents - old_cents)

    # The credit note issued, then a crash before it was recorded, then a rerun days later (Stripe
    # has forgotten the idempotency keys): it is found, never issued twice.
    with engine.begin() as conn:
        conn.execute(text("UPDATE invoices SET stripe_reversal = 'pending', stripe_credit_note_id = NULL "
                          "WHERE id = :id"), {"id": voided["id"]})
    fake_stripe.forget_idempotency_keys()
    rerun = run(env)
    assert rerun.exit_code == 0, rerun.output
    assert len(fake_stripe.credit_notes) == 1
    assert invoices_of(engine)[0]["stripe_credit_note_id"] == note["id"]


def test_a_draft_left_by_a_failed_send_is_deleted(env, engine, fake_stripe) -> None:
    fake_stripe.fail_next(1, 400, method="POST", path_prefix="/v1/invoices/")  # the first send is refused
    first = run(env, "--org", "org-1")
    assert first.exit_code == ExitCode.PARTIAL
    [old] = invoices_of(engine)
    assert old["stripe_status"] == "draft" and fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "draft"
    more_usage(engine)

    result = regenerate(env)

    assert result.exit_code == 0, result.output
    voided, new = invoices_of(engine)
    assert voided["stripe_reversal"] == "deleted" and old["stripe_invoice_id"] not in fake_stripe.invoices
    assert fake_stripe.invoices[new["stripe_invoice_id"]]["status"] == "open"


def test_a_regeneration_with_nothing_to_bill_deletes_the_draft_a_crash_kept_from_us(env, engine,
                                                                                   fake_stripe) -> None:
    """deliveries.md: a Stripe draft whose id never reached the database is looked up "when its
    invoice is voided (`billing invoices void`, `--regenerate`)", also by a `--regenerate` that finds
    nothing left to bill (Action.VOID): else the draft, with our number, would stay in Stripe for
    ever, never reversed, and nothing would look for it again."""
    fake_stripe.fail_next(20, 500, method="POST", path_prefix="/v1/invoices/")  # add_lines fails: a draft stays
    first = run({**env, "INVOICE_ENABLE_EMAIL": "false", "DELIVERY_MAX_RETRY_SECONDS": "2",
                 "DELIVERY_MAX_ATTEMPTS": "2"}, "--org", "org-3")
    fake_stripe.clear_faults()
    assert first.exit_code == ExitCode.PARTIAL, first.output
    [draft] = fake_stripe.invoices.values()
    assert draft["status"] == "draft"
    with engine.begin() as conn:  # the state a crash between the draft's creation and its record leaves
        conn.execute(text("UPDATE invoices SET stripe_invoice_id = NULL, stripe_status = NULL "
                          "WHERE organization_id = 'org-3'"))
        conn.execute(text("DELETE FROM usage_hourly WHERE organization_id = 'org-3'"))  # usage was wrong

    result = run(env, "--org", "org-3", "--regenerate")

    assert result.exit_code == 0, result.output
    [voided] = invoices_of(engine, "org-3")
    assert voided["status"] == "void" and voided["stripe_reversal"] == "deleted"
    assert draft["id"] not in fake_stripe.invoices, "the lost draft stays in Stripe, never to be looked for again"


def test_until_the_old_stripe_invoice_is_voided_the_replacement_goes_neither_to_stripe_nor_to_the_customer(
        env, engine, mail, fake_stripe) -> None:
    assert run(env).exit_code == 0
    [old] = invoices_of(engine)
    more_usage(engine)
    fake_stripe.fail_next(1, 400, method="POST", path_prefix=f"/v1/invoices/{old['stripe_invoice_id']}/void")

    failed = regenerate(env)

    assert failed.exit_code == ExitCode.PARTIAL, failed.output
    assert f"of void {old['number']} could not be voided" in failed.output and "errors_stripe=1" in failed.output
    voided, new = invoices_of(engine)
    assert voided["stripe_reversal"] == "pending" and new["stripe_invoice_id"] is None and new["emailed_at"] is None
    assert len(fake_stripe.invoices) == 3 and len(mail.received) == 3  # nothing new in Stripe or the mailbox
    assert len(fake_stripe.requests_for("POST", f"/v1/invoices/{old['stripe_invoice_id']}/void")) == 1  # asked once

    rerun = run(env)  # the plain monthly command completes it

    assert rerun.exit_code == 0, rerun.output
    voided, new = invoices_of(engine)
    assert voided["stripe_reversal"] == "voided" and new["stripe_status"] == "sent" and new["emailed_at"]
    assert fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "void" and len(mail.received) == 5


def test_with_stripe_off_the_old_stripe_invoice_waits_for_a_run_with_stripe_on(env, engine, fake_stripe) -> None:
    assert run(env).exit_code == 0
    [old] = invoices_of(engine)
    more_usage(engine)

    off = regenerate({**env, "INVOICE_ENABLE_STRIPE": "false"})

    assert off.exit_code == 0, off.output
    assert f"the Stripe invoice of void {old['number']} stays open until a run with Stripe on voids it" in off.output
    assert fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "open"
    assert invoices_of(engine)[0]["stripe_reversal"] == "pending"

    on = run(env)

    assert on.exit_code == 0, on.output
    assert fake_stripe.invoices[old["stripe_invoice_id"]]["status"] == "void"
    assert invoices_of(engine)[0]["stripe_reversal"] == "voided"
