"""Killing `billing invoices void` (SIGKILL) at each step of a credit note's delivery, then running
the month's invoicing again: the credit note ends with one PDF object in S3, one reversal in Stripe
(a void, or one Stripe credit note for a paid invoice) and one e-mail, except the documented window
where the SMTP server accepted the message just before the crash (resent under the same Message-ID).

What the process does, in order: void the invoice and issue its credit note (one transaction), render
and record the PDF, upload it (S3), reverse the Stripe invoice (read it, then void it or issue a
Stripe credit note), e-mail the credit note; each step is recorded the moment it succeeds."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from collections import Counter

import pytest
import stripe
from sqlalchemy import text

from tests.conftest import BILLING
from tests.peers.fixtures import STRIPE_KEY, peer_process_env
from tests.peers.killing_proxy import KillingProxy
from tests.test_crash_recovery import KillingStripe

INVOICE = "INV-2024-01-000001"
NOTE = "CN-2024-01-000001"


@pytest.fixture(scope="module")
def killing_stripe():
    server = KillingStripe().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_proxy(s3_server):
    proxy = KillingProxy(s3_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def peers_env(billed, s3, mail, killing_stripe, s3_proxy, clean_env):
    killing_stripe.reset()
    killing_stripe.victim = killing_stripe.kill_before = killing_stripe.kill_after = None
    s3_proxy.disarm()
    env = peer_process_env(billed, s3, mail, killing_stripe, INVOICE_CONCURRENCY="1")
    return {**env, "INVOICE_S3_ENDPOINT_URL": s3_proxy.url}


def billing(env, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BILLING, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def stripe_request(method: str, pattern: str):
    def predicate(request) -> bool:
        return request.method == method and re.fullmatch(pattern, request.path) is not None
    return predicate


def credit_note_put(method: str, path: str) -> bool:
    return method == "PUT" and f"/{NOTE}.pdf" in path


def killed_void_then_rerun(env, tmp_path, arm) -> None:
    proc = subprocess.Popen([*BILLING, "invoices", "void", INVOICE, "--reason", "Billed twice", "--yes"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arm(proc.pid)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err)
    rerun = billing(env, tmp_path, "invoice-monthly", "--month", "2024-01")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


def assert_credit_note_delivered_once(engine, s3, mail, stripe_server, *, paid: bool, extra_emails: int = 0) -> None:
    with engine.connect() as conn:
        notes = conn.execute(text("SELECT c.number, c.s3_key, c.pdf_sha256, c.emailed_at, c.email_message_id, "
                                  "i.stripe_invoice_id, i.stripe_reversal, i.stripe_credit_note_id, i.id AS invoice_id "
                                  "FROM credit_notes c JOIN invoices i ON i.id = c.invoice_id")).all()
    [note] = notes
    assert note.number == NOTE and note.emailed_at is not None
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"] if "/CN-" in o["Key"]]
    assert keys == [note.s3_key]
    body = s3.client().get_object(Bucket=s3.bucket, Key=note.s3_key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == note.pdf_sha256
    remote = stripe_server.invoices[note.stripe_invoice_id]
    if paid:
        [stripe_note] = stripe_server.credit_notes.values()
        assert (stripe_note["invoice"], stripe_note["amount"]) == (note.stripe_invoice_id, remote["total"])
        assert (note.stripe_reversal, note.stripe_credit_note_id) == ("credited", stripe_note["id"])
    else:
        assert remote["status"] == "void" and note.stripe_reversal == "voided"
        assert stripe_server.credit_notes == {}
    received = Counter(m.message["Message-ID"] for m in mail.received)
    assert received[note.email_message_id] == 1 + extra_emails


def _arm_stripe(server, when: str, predicate):
    def arm(pid: int) -> None:
        setattr(server, when, predicate)
        server.victim = pid
    return arm


@pytest.mark.parametrize("paid,point,hook", [
    (False, "after the credit note, its PDF recorded, before the S3 upload", ("s3", "kill_before")),
    (False, "after the S3 upload, before it was recorded", ("s3", "kill_after")),
    (False, "after S3, before Stripe", ("stripe", "kill_before", "GET", r"/v1/invoices/[^/]+")),
    (False, "after Stripe voided the invoice, before it was recorded",
     ("stripe", "kill_after", "POST", r"/v1/invoices/[^/]+/void")),
    (True, "before the Stripe credit note", ("stripe", "kill_before", "POST", r"/v1/credit_notes")),
    (True, "after the Stripe credit note, before it was recorded",
     ("stripe", "kill_after", "POST", r"/v1/credit_notes")),
])
def test_a_credit_note_killed_at_each_step_is_delivered_exactly_once_by_the_next_run(
        paid, point, hook, peers_env, engine, s3, mail, killing_stripe, s3_proxy, tmp_path) -> None:
    assert billing(peers_env, tmp_path, "invoice-monthly", "--month", "2024-01").returncode == 0
    if paid:
        with engine.connect() as conn:
            stripe_id = conn.execute(text("SELECT stripe_invoice_id FROM invoices WHERE number = :n"),
                                     {"n": INVOICE}).scalar_one()
        client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": killing_stripe.base_url},
                                     max_network_retries=0)
        client.v1.invoices.pay(stripe_id, {"paid_out_of_band": True})
    if hook[0] == "s3":
        def arm(pid: int) -> None:
            setattr(s3_proxy, hook[1], credit_note_put)
            s3_proxy.victim = pid
    else:
        arm = _arm_stripe(killing_stripe, hook[1], stripe_request(hook[2], hook[3]))

    killed_void_then_rerun(peers_env, tmp_path, arm)

    assert_credit_note_delivered_once(engine, s3, mail, killing_stripe, paid=paid)
    again = billing(peers_env, tmp_path, "invoice-monthly", "--month", "2024-01")  # and nothing more after that
    assert again.returncode == 0
    assert_credit_note_delivered_once(engine, s3, mail, killing_stripe, paid=paid)


def test_the_one_window_that_can_resend_a_credit_note_email(peers_env, engine, s3, mail, killing_stripe,
                                                           tmp_path) -> None:
    """Killed right after the SMTP server accepted the credit note's message, before `emailed_at` was
    committed: the next run sends it once more, under the same Message-ID. Nothing else repeats."""
    assert billing(peers_env, tmp_path, "invoice-monthly", "--month", "2024-01").returncode == 0
    state: dict[str, int] = {}

    def kill_on_the_credit_note(received) -> None:
        if state.get("victim") and NOTE in received.message["Subject"]:
            os.kill(state.pop("victim"), signal.SIGKILL)

    mail.on_message = kill_on_the_credit_note
    killed_void_then_rerun(peers_env, tmp_path, lambda pid: state.update(victim=pid))

    assert_credit_note_delivered_once(engine, s3, mail, killing_stripe, paid=False, extra_emails=1)


def test_a_stripe_draft_whose_id_a_crash_kept_from_us_is_deleted_when_its_invoice_is_voided(
        peers_env, engine, s3, mail, killing_stripe, tmp_path) -> None:
    """The run was killed right after Stripe created org-1's draft: its id never reached our
    database. The invoice is voided before any rerun. The void finds the draft by our metadata and
    deletes it (never sent, never charged), so the replacement the next run issues is the only
    Stripe invoice of the customer for the period, and no draft of a void invoice is left behind."""
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=peers_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _arm_stripe(killing_stripe, "kill_after", stripe_request("POST", r"/v1/invoices"))(proc.pid)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err)
    with engine.connect() as conn:
        crashed = conn.execute(text("SELECT id, stripe_invoice_id, organization_id FROM invoices WHERE number = :n"),
                               {"n": INVOICE}).one()
    [draft] = killing_stripe.invoices.values()
    assert crashed.stripe_invoice_id is None and draft["status"] == "draft"
    assert draft["metadata"]["billing_invoice_id"] == str(crashed.id)

    voided = billing(peers_env, tmp_path, "invoices", "void", INVOICE, "--reason", "Wrong plan", "--yes")

    assert voided.returncode == 0, voided.stdout + voided.stderr
    assert draft["id"] not in killing_stripe.invoices  # deleted: nothing of the void invoice stays in Stripe
    with engine.connect() as conn:
        assert conn.execute(text("SELECT stripe_invoice_id, stripe_reversal FROM invoices WHERE id = :i"),
                            {"i": crashed.id}).one() == (draft["id"], "deleted")
        assert conn.execute(text("SELECT count(*) FROM credit_notes")).scalar_one() == 0  # never sent
    rerun = billing(peers_env, tmp_path, "invoice-monthly", "--month", "2024-01")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with engine.connect() as conn:
        live = conn.execute(text("SELECT number, stripe_invoice_id FROM invoices WHERE organization_id = 'org-1' "
                                 "AND status = 'issued'")).one()
    customer = killing_stripe.invoices[live.stripe_invoice_id]["customer"]
    assert [(i["id"], i["status"]) for i in killing_stripe.invoices.values() if i["customer"] == customer] == [
        (live.stripe_invoice_id, "open")]


def test_a_stripe_draft_whose_id_a_crash_kept_from_us_is_deleted_when_its_invoice_is_regenerated(
        peers_env, engine, s3, mail, killing_stripe, tmp_path) -> None:
    """The same crash, then org-1's invoice is regenerated before any plain rerun: the lost draft is
    deleted before the replacement goes to Stripe, which then holds one invoice of org-1 for January."""
    proc = subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=peers_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _arm_stripe(killing_stripe, "kill_after", stripe_request("POST", r"/v1/invoices"))(proc.pid)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out, err)
    [draft] = killing_stripe.invoices.values()

    regenerated = billing(peers_env, tmp_path, "invoice-monthly", "--month", "2024-01", "--org", "org-1",
                          "--regenerate")

    assert regenerated.returncode == 0, regenerated.stdout + regenerated.stderr
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT number, status, stripe_invoice_id, stripe_reversal FROM invoices "
                                 "WHERE organization_id = 'org-1' ORDER BY id")).all()
    [(old, old_status, old_stripe, reversal), (_, new_status, new_stripe, _)] = rows
    assert (old, old_status, old_stripe, reversal) == (INVOICE, "void", draft["id"], "deleted")
    assert draft["id"] not in killing_stripe.invoices and new_status == "issued"
    assert [(i["id"], i["status"]) for i in killing_stripe.invoices.values()
            if i["customer"] == draft["customer"]] == [(new_stripe, "open")]
