"""billing demo: sample plans, organizations and a month of synthetic usage, rolled up hourly
(the CLI then invoices the month with the real invoicing job)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..addresses import BillingDetails
from ..db import demo_store
from ..db.engine import Transactions
from ..db.plan_store import save_plans
from ..db.tax_store import save_rates
from ..errors import Refused
from ..invoices import Seller
from ..periods import Month
from ..plan_file import load_plan_file
from ..tax_file import load_tax_file
from .aggregate import AggregationResult, HourResult, aggregate_hours

DEMO_MONTH = Month(2024, 1)
DEMO_CUSTOMERS_SINCE = datetime(2023, 6, 1, tzinfo=UTC)  # the organizations existed before the demo month
DEMO_PLANS = Path(__file__).with_name("demo_plans.toml")
DEMO_TAXES = Path(__file__).with_name("demo_taxes.toml")
# The demo's own seller, whatever the environment says: taxes are on for its run, from Germany.
DEMO_SELLER = Seller("Nimbus Metering GmbH", ("Hauptstraße 1", "10115 Berlin", "Germany"), "DE136695976", "DE")


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
    # When it was deactivated (an inactive organization): the demo's churned customer left in the
    # middle of the month, so it gets a final invoice with that month's fee.
    deactivated: datetime | None = None
    billing: BillingDetails = BillingDetails()  # the postal address and tax id on its invoices


DEMO_ORGS: tuple[DemoOrg, ...] = (
    DemoOrg("demo-acme", "Acme Analytics Ltd", "billing@acme.example", "active", "USD", "starter",
            api_calls="40 + (extract(minute from t)::int % 7)", storage_gb="0.125",
            billing=BillingDetails("5 Market Street", None, "EC1A 1AA", "London", None, "GB", "GB 980 7806 84")),
    DemoOrg("demo-globex", "Globex Corporation", "ap@globex.example", "active", "USD", "growth",
            # business hours heavy: 9–17 UTC on weekdays
            api_calls="CASE WHEN extract(isodow from t) < 6 AND extract(hour from t) BETWEEN 9 AND 17 "
                      "THEN 900 ELSE 30 END",
            storage_gb="2.5",
            billing=BillingDetails("742 Evergreen Terrace", "Suite 300", "62701", "Springfield", "IL", "US")),
    DemoOrg("demo-initech", "Initech GmbH", "rechnung@initech.example", "active", "EUR", "europe",
            # grows through the month
            api_calls="5 * extract(day from t)::int", storage_gb="0.01 * extract(day from t)::int",
            billing=BillingDetails("Hauptstraße 5", None, "10115", "Berlin", None, "DE", "DE811907980")),
    DemoOrg("demo-lodz", "Łódź Café ΑΒΓ Кафе", "konto@lodz-cafe.example", "active", "EUR", "europe",
            api_calls="3", storage_gb="0",
                        # an EU business in another member state: reverse charge
            billing=BillingDetails("ul. Piotrkowska 104", None, "90-926", "Łódź", None, "PL", "PL5260250274")),
    DemoOrg("demo-tiny", "Tiny Startup Inc.", "founder@tiny.example", "active", "USD", "payg",
            api_calls="CASE WHEN extract(minute from t) = 0 THEN 1 ELSE 0 END", storage_gb="0",
            billing=BillingDetails("1 Infinite Loop", None, "95014", "Cupertino", "CA", "US")),
    DemoOrg("demo-idle", "Idle Labs", "hello@idle.example", "active", "USD", "payg",
            api_calls="0", storage_gb="0"),  # no usage, no fee: nothing to bill
    DemoOrg("demo-umbrella", "Umbrella Corp (closed)", "closed@umbrella.example", "inactive", "USD", "starter",
            api_calls="CASE WHEN t < '2024-01-20' THEN 100 ELSE 0 END",
            storage_gb="CASE WHEN t < '2024-01-20' THEN 1 ELSE 0 END", deactivated=datetime(2024, 1, 20, tzinfo=UTC),
            billing=BillingDetails("1 Umbrella Way", None, "10001", "New York", "NY", "US")),
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
    """Create (or refresh) the demo organizations and their events. Idempotent."""
    with transactions() as conn:
        foreign = demo_store.foreign_organizations(conn)
        if foreign:
            raise Refused(
                f"this database already holds {foreign} organization(s) that `billing demo` did not create; "
                "the demo only seeds an empty database",
                hint="Unset DATABASE_URL to use the embedded database, or point it at an empty one.",
            )
        save_plans(conn, load_plan_file(DEMO_PLANS))
        save_rates(conn, load_tax_file(DEMO_TAXES), every_rate=False)  # beside any rates already there
        result = DemoResult(month=month)
        for org in DEMO_ORGS:
            demo_store.save_demo_organization(conn, id=org.id, name=org.name, email=org.email, status=org.status,
                                              currency=org.currency, plan=org.plan, created_at=DEMO_CUSTOMERS_SINCE,
                                              status_changed_at=org.deactivated or DEMO_CUSTOMERS_SINCE,
                                              billing=org.billing)
            for metric, expression in (("api_calls", org.api_calls), ("storage_gb", org.storage_gb)):
                demo_store.add_synthetic_events(conn, org.id, metric, expression, month)
            events = demo_store.count_events(conn, org.id, month)
            result.organizations.append(DemoOrgResult(org.id, org.name, org.status, events))
    return result


def run_demo(transactions: Transactions, *, on_hour: Callable[[HourResult], None] | None = None) -> DemoResult:
    """Seed the demo and roll its month up hourly (the caller then invoices the month)."""
    result = seed_demo(transactions)
    result.aggregation = aggregate_hours(transactions, result.month.hours(), on_hour=on_hour)
    return result
