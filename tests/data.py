"""Small helpers that write test rows the way the neighbouring services would."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection, text


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# The seller of runs whose invoices can reach customers (any delivery on): the placeholder default is refused.
SELLER_ENV = {"INVOICE_SELLER_NAME": "Nimbus Metering GmbH",
              "INVOICE_SELLER_ADDRESS": "Hauptstrasse 1|10115 Berlin|Germany"}


# Organizations the tests bill for 2024 existed well before: a month before an organization was
# created carries no base fee (nor minimum).
LONG_AGO = datetime(2023, 1, 1, tzinfo=UTC)


def add_org(session: Connection, org_id: str, *, status: str = "active", name: str | None = None,
            email: str | None = None, currency: str = "USD", created_at: datetime = LONG_AGO) -> None:
    """An organization, inserted the way the account service does (the columns it knows)."""
    session.execute(
        text("INSERT INTO organizations (id, name, email, status, currency, created_at) "
             "VALUES (:id, :name, :email, :status, :currency, :created)"),
        {"id": org_id, "name": name or f"Org {org_id}", "email": email or f"{org_id}@example.com",
         "status": status, "currency": currency, "created": created_at},
    )


def add_event(session: Connection, org_id: str, metric: str, quantity: str | Decimal, occurred_at: datetime,
              *, key: str | None = None, received_at: datetime | None = None) -> None:
    session.execute(
        text("INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key, "
             "received_at) VALUES (:org, :metric, :quantity, :at, :key, coalesce(:received, now()))"),
        {"org": org_id, "metric": metric, "quantity": Decimal(quantity), "at": occurred_at, "key": key,
         "received": received_at},
    )


def hourly_rows(session: Connection) -> list[tuple]:
    """usage_hourly as sorted (organization, metric, hour, quantity, event_count) tuples."""
    return [tuple(r) for r in session.execute(text(
        "SELECT organization_id, metric, hour_start, quantity, event_count FROM usage_hourly "
        "ORDER BY 1, 2, 3"))]


def table_snapshot(session: Connection, *tables: str) -> dict[str, list[tuple]]:
    """Every row of the given tables, sorted: for 'nothing changed' assertions."""
    snapshot = {}
    for table in tables:
        rows = session.execute(text(f"SELECT * FROM {table}")).all()
        snapshot[table] = sorted((tuple(r) for r in rows), key=repr)
    return snapshot


# Two plans most invoicing tests use: graduated USD with a base fee, and per-unit EUR.
PLANS = """
[[plan]]
id = "pro"
name = "Pro"
currency = "USD"
base_fee = 10

  [[plan.price]]
  metric = "api_calls"
  description = "API calls"
  model = "graduated"
  tiers = [{ up_to = 1000, unit_price = 0.01 }, { unit_price = 0.005 }]

[[plan]]
id = "euro"
name = "Euro"
currency = "EUR"

  [[plan.price]]
  metric = "api_calls"
  description = "API-Aufrufe"
  model = "per_unit"
  unit_price = 0.1
"""


def add_usage(conn, org_id: str, metric: str, quantity: str, hour=utc(2024, 1, 15, 10)) -> None:
    conn.execute(text("INSERT INTO usage_hourly (organization_id, metric, hour_start, quantity, event_count) "
                      "VALUES (:o, :m, :h, :q, 1)"), {"o": org_id, "m": metric, "h": hour, "q": Decimal(quantity)})


def set_plan(conn, org_id: str, plan: str | None) -> None:
    conn.execute(text("UPDATE organizations SET price_plan_id = :p WHERE id = :o"), {"p": plan, "o": org_id})
