"""SQLAlchemy 2 models: the tables billing owns and the integration contract other services rely on."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import CHAR, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Organization(Base):
    """A customer. The first six columns are the seed's contract; the rest is what billing needs."""

    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(50), server_default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    currency: Mapped[str] = mapped_column(CHAR(3), server_default="USD")
    price_plan_id: Mapped[str | None] = mapped_column(String(100))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (Index("idx_organizations_status", "status"),)


class UsageEvent(Base):
    """Raw usage, written by other services; billing only reads it."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_usage_events_quantity_not_negative"),
        UniqueConstraint("organization_id", "idempotency_key", name="uq_usage_events_org_idempotency_key"),
        Index("idx_usage_events_occurred_at", "occurred_at", postgresql_include=["received_at"]),
    )


class UsageHourly(Base):
    """One row per (organization, metric, UTC hour): the summed quantity and how many events made it."""

    __tablename__ = "usage_hourly"

    organization_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    event_count: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_usage_hourly_quantity_not_negative"),
        CheckConstraint("date_trunc('hour', hour_start, 'UTC') = hour_start", name="ck_usage_hourly_whole_hour"),
        Index("idx_usage_hourly_hour_start", "hour_start"),
    )


class AggregatedHour(Base):
    """When each hour was last rolled up, and what its raw events looked like then.

    Invoicing compares this with the events now in the table to know whether an hour must be
    aggregated again (late events arrived, or events were removed) before a month is rated.
    """

    __tablename__ = "aggregated_hours"

    hour_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    aggregated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    event_count: Mapped[int] = mapped_column(BigInteger)
    last_received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DemoOrganization(Base):
    """The organizations `billing demo` created, so that it never touches anybody else's."""

    __tablename__ = "demo_organizations"

    organization_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))


class PricePlanRow(Base):
    """A price plan, managed as code with `billing plans apply plans.toml`."""

    __tablename__ = "price_plans"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(CHAR(3))
    base_fee: Mapped[Decimal] = mapped_column(Numeric, server_default="0")
    minimum_commitment: Mapped[Decimal] = mapped_column(Numeric, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("base_fee >= 0 AND minimum_commitment >= 0", name="ck_price_plans_fees_not_negative"),
    )


class PlanPriceRow(Base):
    """One metric's price in a plan; graduated and volume prices have tiers."""

    __tablename__ = "plan_prices"

    plan_id: Mapped[str] = mapped_column(String(100), ForeignKey("price_plans.id", ondelete="CASCADE"),
                                         primary_key=True)
    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(255))
    unit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    package_size: Mapped[Decimal | None] = mapped_column(Numeric)
    included: Mapped[Decimal] = mapped_column(Numeric, server_default="0")

    __table_args__ = (
        CheckConstraint("model IN ('per_unit', 'graduated', 'volume', 'package')", name="ck_plan_prices_model"),
        CheckConstraint("unit_price >= 0 AND included >= 0 AND package_size > 0",
                        name="ck_plan_prices_not_negative"),
    )


class PlanPriceTierRow(Base):
    __tablename__ = "plan_price_tiers"

    plan_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    up_to: Mapped[Decimal | None] = mapped_column(Numeric)
    unit_price: Mapped[Decimal] = mapped_column(Numeric)
    flat_fee: Mapped[Decimal] = mapped_column(Numeric, server_default="0")

    __table_args__ = (
        ForeignKeyConstraint(["plan_id", "metric"], ["plan_prices.plan_id", "plan_prices.metric"],
                             ondelete="CASCADE", name="fk_plan_price_tiers_price"),
        CheckConstraint("unit_price >= 0 AND flat_fee >= 0 AND (up_to IS NULL OR up_to > 0)",
                        name="ck_plan_price_tiers_not_negative"),
    )


class InvoiceRow(Base):
    """An issued (or voided) invoice, with the state of each delivery step.

    At most one live (not void) invoice per organization and month: a partial unique index.
    """

    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(255))
    period_start: Mapped[date] = mapped_column(Date)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), server_default="issued")
    currency: Mapped[str] = mapped_column(CHAR(3))
    subtotal: Mapped[Decimal] = mapped_column(Numeric)
    total: Mapped[Decimal] = mapped_column(Numeric)
    plan_id: Mapped[str] = mapped_column(String(100))
    bill_to_name: Mapped[str] = mapped_column(String(255))
    bill_to_email: Mapped[str] = mapped_column(String(255))
    issue_date: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    void_reason: Mapped[str | None] = mapped_column(Text)
    replaces_invoice_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("invoices.id"))
    # Delivery steps: each is recorded as soon as it succeeds, so a rerun does only what is missing.
    pdf_sha256: Mapped[str | None] = mapped_column(CHAR(64))
    pdf_bytes: Mapped[int | None] = mapped_column(Integer)
    pdf_rendered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pdf_path: Mapped[str | None] = mapped_column(Text)
    s3_key: Mapped[str | None] = mapped_column(Text)
    s3_uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255))
    stripe_status: Mapped[str | None] = mapped_column(String(32))
    stripe_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    emailed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email_message_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        CheckConstraint("status IN ('issued', 'void')", name="ck_invoices_status"),
        CheckConstraint("extract(day from period_start) = 1", name="ck_invoices_period_is_a_month"),
        CheckConstraint("due_date >= issue_date", name="ck_invoices_due_after_issue"),
        Index("uq_invoices_one_live_per_org_month", "organization_id", "period_start", unique=True,
              postgresql_where=text("status <> 'void'")),
        Index("idx_invoices_period_start", "period_start"),
    )


class InvoiceLineRow(Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("invoices.id", ondelete="CASCADE"),
                                            primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric)
    unit_price: Mapped[Decimal] = mapped_column(Numeric)
    amount: Mapped[Decimal] = mapped_column(Numeric)


class InvoiceNumberCounter(Base):
    """The last invoice number issued per billing month. Taken with a row lock in the issuing
    transaction, so numbers are gapless: a rolled-back invoice gives its number back."""

    __tablename__ = "invoice_number_counters"

    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer)


class JobRun(Base):
    """One run of a job: written when it starts (running) and when it ends, so a crashed run stays
    visible as one that never finished. Run history, not billing data: dry runs are recorded too."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job: Mapped[str] = mapped_column(String(50))
    period: Mapped[str] = mapped_column(String(100))
    shard: Mapped[str | None] = mapped_column(String(20))
    dry_run: Mapped[bool] = mapped_column(Boolean)
    parameters: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[Decimal | None] = mapped_column(Numeric)
    counts: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    errors: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    revenue: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    failed: Mapped[list] = mapped_column(JSONB, server_default="[]")
    message: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(50))

    __table_args__ = (
        CheckConstraint("status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')",
                        name="ck_job_runs_status"),
        Index("idx_job_runs_job_started", "job", text("started_at DESC")),
    )
