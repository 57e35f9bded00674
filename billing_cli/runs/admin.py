"""The operator's commands that are not scheduled jobs: plans, run history, health, schema,
schedules. Each opens what it needs, does one thing and returns data for the CLI to render."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import load_settings
from ..db.connect import open_database
from ..pricing import PricePlan
from ..schedules import Schedule

Notice = Callable[[str], None]


@dataclass(frozen=True)
class AppliedPlans:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    dry_run: bool


def apply_plans(file: Path, dry_run: bool | None, notice: Notice) -> AppliedPlans:
    """Upsert the plans of a TOML file, all or nothing; a dry run rolls back what it wrote."""
    from ..db.plan_store import save_plans
    from ..plan_file import load_plan_file

    plans = load_plan_file(file)
    settings = load_settings()
    dry = settings.dry_run if dry_run is None else dry_run
    with open_database(settings, notice=notice) as db, db.engine.connect() as conn, conn.begin() as transaction:
        saved = save_plans(conn, plans)
        if dry:
            transaction.rollback()
    return AppliedPlans(saved.created, saved.updated, saved.unchanged, dry)


@dataclass(frozen=True)
class AppliedTaxes:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    kept: list[str]  # stored versions the file does not list: left alone
    dry_run: bool


def apply_taxes(file: Path, dry_run: bool | None, notice: Notice) -> AppliedTaxes:
    """Upsert the rate versions of a taxes TOML file, all or nothing; a dry run rolls back what it wrote."""
    from ..db.tax_store import RateInUse, save_rates
    from ..tax_file import TaxFileError, load_tax_file

    rates = load_tax_file(file)
    settings = load_settings()
    dry = settings.dry_run if dry_run is None else dry_run
    with open_database(settings, notice=notice) as db, db.engine.connect() as conn, conn.begin() as transaction:
        try:
            saved = save_rates(conn, rates)
        except RateInUse as exc:
            transaction.rollback()
            raise TaxFileError(f"{file}: nothing applied: {exc}") from None
        if dry:
            transaction.rollback()
    return AppliedTaxes(saved.created, saved.updated, saved.unchanged, saved.kept, dry)


def list_taxes(notice: Notice) -> list:  # -> list[taxes.TaxRate]
    from ..db.tax_store import load_rates

    with open_database(load_settings(), notice=notice) as db, db.engine.connect() as conn:
        return load_rates(conn)


def list_plans(notice: Notice) -> list[PricePlan]:
    from ..db.plan_store import load_plans

    with open_database(load_settings(), notice=notice) as db, db.engine.connect() as conn:
        return list(load_plans(conn).values())


def run_history(job: str | None, limit: int, notice: Notice) -> list[dict[str, Any]]:
    from ..db.run_store import recent_runs

    with open_database(load_settings(), notice=notice) as db, db.engine.connect() as conn:
        return recent_runs(conn, job=job, limit=limit)


def job_health(now: datetime, notice: Notice) -> list:
    """Each job's status (jobs/status.py), with the thresholds from the configuration."""
    from ..jobs.status import Thresholds, job_statuses

    settings = load_settings()
    thresholds = Thresholds(timedelta(hours=settings.status_aggregate_max_age_hours),
                            settings.status_invoice_deadline_day,
                            timedelta(hours=settings.status_stuck_after_hours))
    with open_database(settings, notice=notice) as db, db.engine.connect() as conn:
        return job_statuses(conn, now, thresholds)


@dataclass(frozen=True)
class SchemaUpgrade:
    database: str
    before: str | None  # the revision found (None: an empty database)
    after: str | None  # the revision left
    partitions: Any = None  # jobs.partitions.PartitionUpkeep: usage_events' partitions made ahead


@dataclass(frozen=True)
class SchemaRevision:
    database: str
    current: str | None  # the database's revision
    head: str  # the revision this program needs

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def upgrade_schema(notice: Notice) -> SchemaUpgrade:
    """Apply the migrations (safe to repeat; concurrent runs wait for each other), then make
    usage_events' partitions for the current and the next month if they are missing."""
    from ..db.migrate import upgrade
    from ..jobs.partitions import keep_partitions_ahead
    from ..periods import utc_now

    with open_database(load_settings(), notice=notice, require_schema=False) as db:
        before, after = upgrade(db.engine)
        return SchemaUpgrade(db.where, before, after, keep_partitions_ahead(db.transactions, utc_now()))


def schema_revision(notice: Notice) -> SchemaRevision:
    from ..db.migrate import HEAD, current_revision

    with open_database(load_settings(), notice=notice, require_schema=False) as db, db.engine.connect() as conn:
        return SchemaRevision(db.where, current_revision(conn), HEAD)


def configured_schedules() -> list[Schedule]:
    from ..outcomes import Job
    from ..schedules import parse_schedule

    settings = load_settings()
    return [parse_schedule(Job.AGGREGATE_HOURLY, settings.aggregate_schedule),
            parse_schedule(Job.INVOICE_MONTHLY, settings.invoice_schedule),
            parse_schedule(Job.LEGACY_RUN, settings.run_schedule),
            parse_schedule(Job.RECONCILE, settings.reconcile_schedule)]
