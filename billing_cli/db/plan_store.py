"""Price plans in PostgreSQL: upsert validated plans (keeping each definition's version and when it is
in force), load them back as pricing.PricePlan, as they are now or as they were for a period."""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from ..pricing import Price, PricePlan, Tier, plan_from_snapshot, plan_snapshot

# When a plan's first known definition is in force from: before anything is billed.
SINCE_ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SavedPlans:
    created: list[str]
    updated: list[str]
    unchanged: list[str]


def save_plans(session: Connection, plans: list[PricePlan], *, effective: datetime | None = None) -> SavedPlans:
    """Upsert every plan in the caller's transaction (all or nothing). Plans not in the list are
    left alone: organizations may still reference them. Each new definition is also kept as a
    version in force from `effective` (default: now, so a period under way keeps the definition it
    started with: a change takes effect at each organization's next period boundary); a new plan's
    first definition is in force since always."""
    existing = load_plans(session, [p.id for p in plans])
    versioned = set(session.execute(text("SELECT DISTINCT plan_id FROM price_plan_versions WHERE plan_id = ANY(:ids)"),
                                    {"ids": [p.id for p in plans]}).scalars())
    scheduled = load_plan_versions(session, [p.id for p in plans]) if effective is not None else PlanVersions()
    created, updated, unchanged = [], [], []
    for plan in plans:
        if existing.get(plan.id) == plan:
            if effective is not None and plan.id in versioned and scheduled.at(plan.id, effective) != plan:
                _save_version(session, plan, effective)  # the same definition, now also in force earlier
                updated.append(plan.id)
            else:
                unchanged.append(plan.id)
            continue
        (updated if plan.id in existing else created).append(plan.id)
        session.execute(text("""
            INSERT INTO price_plans (id, name, currency, base_fee, minimum_commitment, free_metrics, updated_at)
            VALUES (:id, :name, :currency, :base_fee, :minimum, :free, now())
            ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency,
                base_fee = EXCLUDED.base_fee, minimum_commitment = EXCLUDED.minimum_commitment,
                free_metrics = EXCLUDED.free_metrics, updated_at = now()
        """), {"id": plan.id, "name": plan.name, "currency": plan.currency, "base_fee": plan.base_fee,
               "minimum": plan.minimum_commitment, "free": list(plan.free_metrics)})
        session.execute(text("DELETE FROM plan_prices WHERE plan_id = :id"), {"id": plan.id})
        for position, price in enumerate(plan.prices):
            session.execute(text("""
                INSERT INTO plan_prices (plan_id, metric, position, model, description, unit_price,
                                         package_size, included)
                VALUES (:plan, :metric, :position, :model, :description, :unit_price, :package_size, :included)
            """), {"plan": plan.id, "metric": price.metric, "position": position, "model": price.model,
                   "description": price.description, "unit_price": price.unit_price,
                   "package_size": price.package_size, "included": price.included})
            for tier_position, tier in enumerate(price.tiers):
                session.execute(text("""
                    INSERT INTO plan_price_tiers (plan_id, metric, position, up_to, unit_price, flat_fee)
                    VALUES (:plan, :metric, :position, :up_to, :unit_price, :flat_fee)
                """), {"plan": plan.id, "metric": price.metric, "position": tier_position,
                       "up_to": tier.up_to, "unit_price": tier.unit_price, "flat_fee": tier.flat_fee})
        if plan.id in existing and plan.id not in versioned:  # the definition until now, kept first
            _save_version(session, existing[plan.id], SINCE_ALWAYS)
        _save_version(session, plan, SINCE_ALWAYS if plan.id not in existing else effective)
    return SavedPlans(created, updated, unchanged)


def _save_version(session: Connection, plan: PricePlan, effective: datetime | None) -> None:
    session.execute(text("""
        INSERT INTO price_plan_versions (plan_id, effective_from, snapshot)
        VALUES (:id, coalesce(:effective, now()), CAST(:snapshot AS jsonb))
        ON CONFLICT (plan_id, effective_from) DO UPDATE SET snapshot = EXCLUDED.snapshot, applied_at = now()
    """), {"id": plan.id, "effective": effective, "snapshot": json.dumps(plan_snapshot(plan))})


@dataclass(frozen=True)
class PlanVersions:
    """Plans as they were over time: each one's versions (in force from, applied at, definition) in
    the order they are in force, and its current definition for a plan that has no version (written
    before versions were kept)."""

    versions: dict[str, list[tuple[datetime, datetime, PricePlan]]] = field(default_factory=dict)
    current: dict[str, PricePlan] = field(default_factory=dict)

    def at(self, plan_id: str, moment: datetime) -> PricePlan | None:
        """The definition in force at `moment` (a period's start): of the versions in force by then,
        the one applied last (a later apply replaces a change scheduled after its own time: applying
        the old file again cancels a raise scheduled for next month); before the first version, the
        first one (a plan created during the period)."""
        versions = self.versions.get(plan_id)
        if not versions:
            return self.current.get(plan_id)
        in_force = versions[:max(bisect_right([since for since, _, _ in versions], moment), 1)]
        return max(in_force, key=lambda version: (version[1], version[0]))[2]


def load_plan_versions(session: Connection, ids: list[str]) -> PlanVersions:
    versions: dict[str, list[tuple[datetime, datetime, PricePlan]]] = defaultdict(list)
    for row in session.execute(text("SELECT plan_id, effective_from, applied_at, snapshot FROM price_plan_versions "
                                    "WHERE plan_id = ANY(:ids) ORDER BY plan_id, effective_from"), {"ids": ids}):
        versions[row.plan_id].append((row.effective_from, row.applied_at, plan_from_snapshot(row.snapshot)))
    unversioned = [plan_id for plan_id in ids if plan_id not in versions]
    return PlanVersions(dict(versions), load_plans(session, unversioned) if unversioned else {})


def load_plans(session: Connection, ids: list[str] | None = None) -> dict[str, PricePlan]:
    """Plans by id (all of them, or the given ids)."""
    where = "" if ids is None else "WHERE p.id = ANY(:ids)"
    params = {} if ids is None else {"ids": list(ids)}
    plans = session.execute(text(f"SELECT p.* FROM price_plans p {where} ORDER BY p.id"), params).all()
    if not plans:
        return {}
    plan_ids = [p.id for p in plans]
    tiers: dict[tuple[str, str], list[Tier]] = defaultdict(list)
    for t in session.execute(text("SELECT * FROM plan_price_tiers WHERE plan_id = ANY(:ids) "
                                  "ORDER BY plan_id, metric, position"), {"ids": plan_ids}):
        tiers[(t.plan_id, t.metric)].append(Tier(_n(t.up_to), Decimal(t.unit_price), Decimal(t.flat_fee)))
    prices: dict[str, list[Price]] = defaultdict(list)
    for p in session.execute(text("SELECT * FROM plan_prices WHERE plan_id = ANY(:ids) "
                                  "ORDER BY plan_id, position"), {"ids": plan_ids}):
        prices[p.plan_id].append(Price(p.metric, p.model, p.description, _n(p.unit_price), _n(p.package_size),
                                       tuple(tiers[(p.plan_id, p.metric)]), Decimal(p.included)))
    return {p.id: PricePlan(p.id, p.name, p.currency, tuple(prices[p.id]), Decimal(p.base_fee),
                            Decimal(p.minimum_commitment), tuple(p.free_metrics)) for p in plans}


def _n(value: Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(value)
