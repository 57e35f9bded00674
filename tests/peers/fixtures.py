"""Pytest fixtures for the real local peers (S3, SMTP, Stripe) and a month ready to invoice."""

from __future__ import annotations

import re
import uuid

import pytest
import stripe
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from tests.data import PLANS, SELLER_ENV, add_org, add_usage, set_plan
from tests.peers.mail_server import MailServer
from tests.peers.s3_server import S3Server
from tests.peers.stripe_server import FakeStripeServer

runner = CliRunner()
STRIPE_KEY = "sk_test_DELIVERYsecret0001"


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mail_module():
    server = MailServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stripe_module():
    server = FakeStripeServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_SESSION_TOKEN", "testing")):
        monkeypatch.setenv(name, value)
    # A fresh bucket per test on the module's server: the test's name (readable in moto's logs) and
    # a random part, since parametrized tests share the first 30 characters of their names.
    bucket = f"invoices-{re.sub('[^a-z0-9]+', '-', request.node.name[:30].lower())}-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3_server.bucket = bucket
    return s3_server


@pytest.fixture
def mail(mail_module):
    mail_module.received.clear()
    mail_module.failures.clear()
    mail_module.quits = 0
    mail_module.on_message = None
    return mail_module


@pytest.fixture
def fake_stripe(stripe_module, monkeypatch):
    stripe_module.reset()
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)  # keep the SDK's retry backoff short
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.05)
    return stripe_module


@pytest.fixture
def billed(db_url, engine, tmp_path):
    """Three organizations with usage for January 2024 and plans (two USD, one EUR)."""
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        for org_id, plan, currency, quantity in (("org-1", "pro", "USD", "100"), ("org-2", "pro", "USD", "2500"),
                                                 ("org-3", "euro", "EUR", "12.345")):
            add_org(conn, org_id, currency=currency, name=f"Customer {org_id[-1]}", email=f"{org_id}@example.com")
            set_plan(conn, org_id, plan)
            add_usage(conn, org_id, "api_calls", quantity)
    return db_url



def peer_env(database_url: str, s3: S3Server, mail: MailServer, stripe_server: FakeStripeServer,
             **overrides: str) -> dict[str, str]:
    """The settings of a run that delivers to the local peers: S3, Stripe and e-mail all on."""
    return {
        "DATABASE_URL": database_url,
        "INVOICE_ENABLE_S3": "true", "INVOICE_S3_BUCKET": s3.bucket, "INVOICE_S3_REGION": "eu-west-1",
        "INVOICE_S3_ENDPOINT_URL": s3.url,
        "INVOICE_ENABLE_STRIPE": "true", "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": stripe_server.base_url,
        "INVOICE_ENABLE_EMAIL": "true", "INVOICE_SMTP_HOST": "127.0.0.1", "INVOICE_SMTP_PORT": str(mail.port),
        "INVOICE_SMTP_SECURITY": "none", "INVOICE_SMTP_USERNAME": mail.username,
        "INVOICE_SMTP_PASSWORD": mail.password, "INVOICE_SMTP_FROM": "Billing <billing@example.cloud>",
        **SELLER_ENV, **overrides,
    }


def peer_process_env(database_url: str, s3: S3Server, mail: MailServer, stripe_server: FakeStripeServer,
                     **overrides: str) -> dict[str, str]:
    """The same, as the whole environment of a `billing` subprocess (no .env, moto's dummy keys)."""
    from tests.conftest import billing_subprocess_env

    return billing_subprocess_env(**peer_env(database_url, s3, mail, stripe_server), BILLING_ENV_FILE="/dev/null",
                                  AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", **overrides)


def stripe_lines(fake: FakeStripeServer) -> list[tuple[str, str, int]]:
    """(our invoice id, line number, amount) of every Stripe invoice line: no duplicates allowed."""
    return sorted((line["metadata"]["billing_invoice_id"], line["metadata"]["line_no"], line["amount"])
                  for invoice in fake.invoices.values() for line in invoice["lines"]["data"])


def our_lines(engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT l.invoice_id, l.line_no, l.amount, i.currency FROM invoice_lines l "
                                 "JOIN invoices i ON i.id = l.invoice_id WHERE i.status = 'issued'")).all()
    return sorted((str(r.invoice_id), str(r.line_no), int(r.amount * 100)) for r in rows)
