"""Price plans in PostgreSQL: upsert validated plans, load them back as pricing.PricePlan."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, text

from ..pricing import Price, PricePlan, Tier


@dataclass(frozen=True)
class SavedPlans:
    created: list[str]
    updated: list[str]
    unchanged: list[str]


def save_plans(session: Connection, plans: list[PricePlan]) -> SavedPlans:
    """Upsert every plan in the caller's transaction (all or nothing). Plans not in the list are
    left alone: organizations may still reference them."""
    existing = load_plans(session, [p.id for p in plans])
    created, updated, unchanged = [], [], []
    for plan in plans:
        if existing.get(plan.id) == plan:
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
    return SavedPlans(created, updated, unchanged)


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
