"""billing demo: sample plans, organizations and a month of synthetic usage, rolled up hourly
(the CLI then invoices the month with the real invoicing job)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, text

from ..db.engine import Transactions
from ..db.plan_store import save_plans
from ..errors import Refused
from ..periods import Month
from ..plan_file import load_plan_file
from .aggregate import AggregationResult, HourResult, aggregate_hours

DEMO_MONTH = Month(2024, 1)
DEMO_PLANS = Path(__file__).with_name("demo_plans.toml")


@dataclass(frozen=True)
class DemoOrg:
    id: str
    name: str
    email: str
    status: str
    currency: str
    plan: str
    # SQL expression for one event's quantity at time `t` (5-minute ticks over the month);
    # deterministic, so every demo run produces the same usage and the same totals.
    api_calls: str
    storage_gb: str


DEMO_ORGS: tuple[DemoOrg, ...] = (
    DemoOrg("demo-acme", "Acme Analytics Ltd", "billing@acme.example", "active", "USD", "starter",
            api_calls="40 + (extract(minute from t)::int % 7)", storage_gb="0.125"),
    DemoOrg("demo-globex", "Globex Corporation", "ap@globex.example", "active", "USD", "growth",
            # business hours heavy: 9–17 UTC on weekdays
            api_calls="CASE WHEN extract(isodow from t) < 6 AND extract(hour from t) BETWEEN 9 AND 17 "
                      "THEN 900 ELSE 30 END",
            storage_gb="2.5"),
    DemoOrg("demo-initech", "Initech GmbH", "rechnung@initech.example", "active", "EUR", "europe",
            # grows through the month
            api_calls="5 * extract(day from t)::int", storage_gb="0.01 * extract(day from t)::int"),
    DemoOrg("demo-lodz", "Łódź Café ΑΒΓ Кафе", "konto@lodz-cafe.example", "active", "EUR", "europe",
            api_calls="3", storage_gb="0"),
    DemoOrg("demo-tiny", "Tiny Startup Inc.", "founder@tiny.example", "active", "USD", "payg",
            api_calls="CASE WHEN extract(minute from t) = 0 THEN 1 ELSE 0 END", storage_gb="0"),
    DemoOrg("demo-idle", "Idle Labs", "hello@idle.example", "active", "USD", "payg",
            api_calls="0", storage_gb="0"),  # no usage, no fee: nothing to bill
    DemoOrg("demo-umbrella", "Umbrella Corp (closed)", "closed@umbrella.example", "inactive", "USD", "starter",
            api_calls="100", storage_gb="1"),
)


@dataclass(frozen=True)
class DemoOrgResult:
    id: str
    name: str
    status: str
    events: int


@dataclass
class DemoResult:
    month: Month
    organizations: list[DemoOrgResult] = field(default_factory=list)
    aggregation: AggregationResult | None = None


def seed_demo(transactions: Transactions, *, month: Month = DEMO_MONTH) -> DemoResult:
    """Create (or refresh) the demo organizations and their events. Idempotent: events carry
    idempotency keys, so a second run inserts nothing new."""
    with transactions() as session:
        _refuse_foreign_data(session)
        save_plans(session, load_plan_file(DEMO_PLANS))
        result = DemoResult(month=month)
        for org in DEMO_ORGS:
            session.execute(text("""
                INSERT INTO organizations (id, name, email, status, currency, price_plan_id)
                VALUES (:id, :name, :email, :status, :currency, :plan)
                ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
                    status = EXCLUDED.status, currency = EXCLUDED.currency,
                    price_plan_id = EXCLUDED.price_plan_id, updated_at = now()
            """), {"id": org.id, "name": org.name, "email": org.email, "status": org.status,
                   "currency": org.currency, "plan": org.plan})
            session.execute(text("INSERT INTO demo_organizations (organization_id) VALUES (:id) "
                                 "ON CONFLICT DO NOTHING"), {"id": org.id})
            for metric, expression in (("api_calls", org.api_calls), ("storage_gb", org.storage_gb)):
                # One event every 5 minutes of the month, quantities from the profile's formula;
                # zero-quantity ticks are left out, as a real service would not send them.
                session.execute(text(f"""
                    INSERT INTO usage_events (organization_id, metric, quantity, occurred_at,
                                              idempotency_key, received_at)
                    SELECT :id, CAST(:metric AS varchar), q, t, CAST(:metric AS varchar) || '@' || to_char(t, 'YYYY-MM-DD"T"HH24:MI'), t
                    FROM (SELECT t, ({expression})::numeric AS q
                          FROM generate_series(CAST(:start AS timestamptz),
                                               CAST(:end AS timestamptz) - interval '5 minutes',
                                               interval '5 minutes') AS t) ticks
                    WHERE q > 0
                    ON CONFLICT (organization_id, idempotency_key) DO NOTHING
                """), {"id": org.id, "metric": metric, "start": month.start, "end": month.end})
            events = session.execute(text(
                "SELECT count(*) FROM usage_events WHERE organization_id = :id "
                "AND occurred_at >= :start AND occurred_at < :end"),
                {"id": org.id, "start": month.start, "end": month.end}).scalar_one()
            result.organizations.append(DemoOrgResult(org.id, org.name, org.status, events))
    return result


def run_demo(transactions: Transactions, *, on_hour: Callable[[HourResult], None] | None = None) -> DemoResult:
    result = seed_demo(transactions)
    result.aggregation = aggregate_hours(transactions, result.month.hours(), on_hour=on_hour)
    return result


def _refuse_foreign_data(session: Connection) -> None:
    foreign = session.execute(text("""
        SELECT count(*) FROM organizations o
        WHERE NOT EXISTS (SELECT 1 FROM demo_organizations d WHERE d.organization_id = o.id)
    """)).scalar_one()
    if foreign:
        raise Refused(
            f"this database already holds {foreign} organization(s) that `billing demo` did not create; "
            "the demo only seeds an empty database",
            hint="Unset DATABASE_URL to use the embedded database, or point it at an empty one.",
        )
