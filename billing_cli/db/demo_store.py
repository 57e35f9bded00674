"""The demo's rows: its organizations, marked as the demo's, and their synthetic usage events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

from ..addresses import BillingDetails
from ..periods import Month


def foreign_organizations(conn: Connection) -> int:
    """Organizations that the demo did not create (it refuses to touch such a database)."""
    return conn.execute(text("""
        SELECT count(*) FROM organizations o
        WHERE NOT EXISTS (SELECT 1 FROM demo_organizations d WHERE d.organization_id = o.id)
    """)).scalar_one()


def save_demo_organization(conn: Connection, *, id: str, name: str, email: str, status: str, currency: str,
                           plan: str, created_at: datetime, status_changed_at: datetime,
                           billing: BillingDetails = BillingDetails()) -> None:
    conn.execute(text("""
        INSERT INTO organizations (id, name, email, status, currency, price_plan_id, created_at, status_changed_at,
                                   billing_address_line1, billing_address_line2, billing_postal_code, billing_city,
                                   billing_region, billing_country, tax_id, tax_exempt)
        VALUES (:id, :name, :email, :status, :currency, :plan, :created, :changed,
                :line1, :line2, :postal_code, :city, :region, :country, :tax_id, :tax_exempt)
        ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
            status = EXCLUDED.status, currency = EXCLUDED.currency, price_plan_id = EXCLUDED.price_plan_id,
            created_at = EXCLUDED.created_at, status_changed_at = EXCLUDED.status_changed_at, updated_at = now(),
            billing_address_line1 = EXCLUDED.billing_address_line1,
            billing_address_line2 = EXCLUDED.billing_address_line2, billing_postal_code = EXCLUDED.billing_postal_code,
            billing_city = EXCLUDED.billing_city, billing_region = EXCLUDED.billing_region,
            billing_country = EXCLUDED.billing_country, tax_id = EXCLUDED.tax_id, tax_exempt = EXCLUDED.tax_exempt
    """), {"id": id, "name": name, "email": email, "status": status, "currency": currency, "plan": plan,
           "created": created_at, "changed": status_changed_at, "line1": billing.address_line1,
           "line2": billing.address_line2, "postal_code": billing.postal_code, "city": billing.city,
           "region": billing.region, "country": billing.country, "tax_id": billing.tax_id,
           "tax_exempt": billing.tax_exempt})
    conn.execute(text("INSERT INTO demo_organizations (organization_id) VALUES (:id) ON CONFLICT DO NOTHING"),
                 {"id": id})


def add_synthetic_events(conn: Connection, organization_id: str, metric: str, quantity_sql: str,
                         month: Month) -> None:
    """One event every 5 minutes of the month, its quantity given by the SQL expression
    `quantity_sql` of the tick time `t`; zero-quantity ticks are left out, as a real service would
    not send them. Events carry idempotency keys, so running it again inserts nothing."""
    conn.execute(text(f"""
        INSERT INTO usage_events (organization_id, metric, quantity, occurred_at, idempotency_key, received_at)
        SELECT :id, CAST(:metric AS varchar), q, t,
               CAST(:metric AS varchar) || '@' || to_char(t, 'YYYY-MM-DD"T"HH24:MI'), t
        FROM (SELECT t, ({quantity_sql})::numeric AS q
              FROM generate_series(CAST(:start AS timestamptz), CAST(:end AS timestamptz) - interval '5 minutes',
                                   interval '5 minutes') AS t) ticks
        WHERE q > 0
        ON CONFLICT (organization_id, idempotency_key, occurred_at) DO NOTHING
    """), {"id": organization_id, "metric": metric, "start": month.start, "end": month.end})


def count_events(conn: Connection, organization_id: str, month: Month) -> int:
    return conn.execute(text("SELECT count(*) FROM usage_events WHERE organization_id = :id "
                             "AND occurred_at >= :start AND occurred_at < :end"),
                        {"id": organization_id, "start": month.start, "end": month.end}).scalar_one()
