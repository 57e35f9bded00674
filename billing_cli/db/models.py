"""SQLAlchemy 2 models: the tables billing owns and the integration contract other services rely on."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import CHAR
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
