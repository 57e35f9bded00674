"""Price plans as code: read and validate a plans TOML file (format: docs/plans.md).

All of the file is checked before anything is written; an error names the file, the line, the
plan and the price.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import UsageError
from .money import ZERO, CurrencyError, check_currency, round_money
from .pricing import MODELS, Price, PricePlan, Tier

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_PLAN_KEYS = {"id", "name", "currency", "base_fee", "minimum_commitment", "price", "free_metrics"}
_PRICE_KEYS = {"metric", "description", "model", "unit_price", "package_size", "tiers", "included"}
_TIER_KEYS = {"up_to", "unit_price", "flat_fee"}


class PlanFileError(UsageError):
    """A plans file that cannot be applied; exit code 2 (fix the file)."""


@dataclass
class _Lines:
    """Where the `[[plan]]` and `[[plan.price]]` tables start, to name lines in errors."""

    text_lines: list[str]
    plans: list[int]
    prices: list[list[int]]

    @classmethod
    def scan(cls, text: str) -> _Lines:
        lines = text.splitlines()
        plans: list[int] = []
        prices: list[list[int]] = []
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if stripped.startswith("[[plan]]"):
                plans.append(number)
                prices.append([])
            elif stripped.startswith("[[plan.price]]") and prices:
                prices[-1].append(number)
        return cls(lines, plans, prices)

    def of_key(self, start: int, key: str) -> int:
        """The line of `key = …` in the table starting at `start` (or the table's own line)."""
        for number in range(start + 1, len(self.text_lines) + 1):
            stripped = self.text_lines[number - 1].strip()
            if stripped.startswith("["):
                break
            if re.match(rf"^{re.escape(key)}\s*=", stripped):
                return number
        return start


def load_plan_file(path: Path) -> list[PricePlan]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"cannot read plans file {path}: {exc.strerror}") from None
    return parse_plans(text, source=str(path))


def parse_plans(text: str, *, source: str = "plans.toml") -> list[PricePlan]:
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PlanFileError(f"{source}: not valid TOML: {exc}") from None
    lines = _Lines.scan(text)
    unknown = set(document) - {"plan"}
    if unknown:
        raise PlanFileError(f"{source}: unknown top-level key(s) {sorted(unknown)}; plans go in [[plan]] tables")
    raw_plans = document.get("plan", [])
    if not isinstance(raw_plans, list) or not raw_plans:
        raise PlanFileError(f"{source}: no [[plan]] tables found")
    plans: list[PricePlan] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_plans):
        start = lines.plans[index] if index < len(lines.plans) else 1
        plan = _plan(raw, source, lines, index, start)
        if plan.id in seen:
            raise PlanFileError(f"{source}:{lines.of_key(start, 'id')}: plan {plan.id!r} is defined twice")
        seen.add(plan.id)
        plans.append(plan)
    return plans


def _plan(raw: dict[str, Any], source: str, lines: _Lines, index: int, start: int) -> PricePlan:
    plan_id = raw.get("id")
    where = f"{source}:{start}: plan {plan_id!r}" if isinstance(plan_id, str) else f"{source}:{start}: plan #{index + 1}"

    def fail(key: str | None, message: str) -> PlanFileError:
        line = lines.of_key(start, key) if key else start
        return PlanFileError(f"{source}:{line}: plan {plan_id!r}: {message}")

    if not isinstance(plan_id, str) or not _ID.match(plan_id):
        raise PlanFileError(f"{where}: `id` must be letters, digits, '-', '_' or '.' (at most 100)")
    _no_unknown_keys(raw, _PLAN_KEYS, lambda key: fail(key, f"unknown key {key!r}"))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "`name` is required")
    currency = raw.get("currency")
    try:
        currency = check_currency(currency if isinstance(currency, str) else repr(currency))
    except CurrencyError as exc:
        raise fail("currency", str(exc)) from None
    base_fee = _money(raw, "base_fee", currency, fail)
    minimum = _money(raw, "minimum_commitment", currency, fail)
    prices: list[Price] = []
    raw_prices = raw.get("price", [])
    if not isinstance(raw_prices, list):
        raise fail("price", "prices go in [[plan.price]] tables")
    metrics: set[str] = set()
    for p_index, raw_price in enumerate(raw_prices):
        p_start = lines.prices[index][p_index] if index < len(lines.prices) and p_index < len(lines.prices[index]) else start
        price = _price(raw_price, currency, lambda key, msg, s=p_start, r=raw_price: PlanFileError(
            f"{source}:{lines.of_key(s, key) if key else s}: plan {plan_id!r}, price "
            f"{r.get('metric')!r}: {msg}"))
        if price.metric in metrics:
            raise PlanFileError(f"{source}:{p_start}: plan {plan_id!r}: metric {price.metric!r} is priced twice")
        metrics.add(price.metric)
        prices.append(price)
    if not prices and base_fee == 0 and minimum == 0:
        raise fail(None, "the plan has no price, no base fee and no minimum commitment")
    free = raw.get("free_metrics", [])
    if not isinstance(free, list) or not all(isinstance(m, str) and _ID.match(m) for m in free):
        raise fail("free_metrics", "`free_metrics` must be a list of metric names, e.g. [\"health_checks\"]")
    priced_and_free = sorted(metrics & set(free))
    if priced_and_free:
        raise fail("free_metrics", f"{', '.join(priced_and_free)} cannot be both priced and free")
    return PricePlan(plan_id, name.strip(), currency, tuple(prices), base_fee, minimum, tuple(sorted(set(free))))


def _price(raw: dict[str, Any], currency: str, fail) -> Price:
    _no_unknown_keys(raw, _PRICE_KEYS, lambda key: fail(key, f"unknown key {key!r}"))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not _ID.match(metric):
        raise fail("metric", "`metric` is required (letters, digits, '-', '_', '.')")
    model = raw.get("model")
    if model not in MODELS:
        raise fail("model", f"unknown model {model!r}: use one of {', '.join(MODELS)}")
    description = raw.get("description", default_description(metric))
    if not isinstance(description, str) or not description.strip() or any(c in description for c in "\r\n"):
        raise fail("description", "`description` must be one line of text")
    included = _amount(raw, "included", fail)
    unit_price = package_size = None
    tiers: tuple[Tier, ...] = ()
    if model in ("per_unit", "package"):
        if "unit_price" not in raw:
            raise fail(None, f"a {model} price needs `unit_price`")
        if "tiers" in raw:
            raise fail("tiers", f"a {model} price has no tiers")
        unit_price = _amount(raw, "unit_price", fail)
        if model == "package":
            package_size = _amount(raw, "package_size", fail)
            if package_size <= 0:
                raise fail("package_size", "a package price needs `package_size` > 0")
    else:
        if "unit_price" in raw:
            raise fail("unit_price", f"a {model} price is priced by its tiers, not `unit_price`")
        tiers = _tiers(raw.get("tiers"), currency, fail)
    return Price(metric, model, description.strip(), unit_price, package_size, tiers, included)


def _tiers(raw: Any, currency: str, fail) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        raise fail("tiers", "`tiers` must be a non-empty list of { up_to, unit_price, flat_fee }")
    tiers: list[Tier] = []
    previous = ZERO
    for number, tier in enumerate(raw, start=1):
        if not isinstance(tier, dict):
            raise fail("tiers", f"tier {number} is not a table")
        _no_unknown_keys(tier, _TIER_KEYS, lambda key, n=number: fail("tiers", f"tier {n}: unknown key {key!r}"))
        last = number == len(raw)
        if "unit_price" not in tier:
            raise fail("tiers", f"tier {number} needs `unit_price`")
        unit_price = _amount(tier, "unit_price", lambda k, m, n=number: fail("tiers", f"tier {n}: {m}"))
        flat_fee = _money(tier, "flat_fee", currency, lambda k, m, n=number: fail("tiers", f"tier {n}: {m}"))
        if "up_to" in tier:
            up_to = _amount(tier, "up_to", lambda k, m, n=number: fail("tiers", f"tier {n}: {m}"))
            if up_to <= previous:
                raise fail("tiers", f"tiers overlap or are not in increasing order: tier {number} "
                                    f"ends at {up_to}, not above {previous}")
            if last:
                raise fail("tiers", "the last tier must have no `up_to` (it covers everything above)")
            previous = up_to
        elif not last:
            raise fail("tiers", f"only the last tier may omit `up_to` (tier {number} does)")
        else:
            up_to = None
        tiers.append(Tier(up_to, unit_price, flat_fee))
    return tuple(tiers)


def _amount(raw: dict[str, Any], key: str, fail) -> Decimal:
    value = raw.get(key, ZERO)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise fail(key, f"`{key}` must be a number")
    try:
        number = Decimal(value)
    except ArithmeticError:
        raise fail(key, f"`{key}` = {value!r} is not a number") from None
    if not number.is_finite():
        raise fail(key, f"`{key}` must be a finite number")
    if number < 0:
        raise fail(key, f"`{key}` must not be negative (got {number})")
    return number


def _money(raw: dict[str, Any], key: str, currency: str, fail) -> Decimal:
    amount = _amount(raw, key, fail)
    if round_money(amount, currency) != amount:
        raise fail(key, f"`{key}` = {amount} has more decimals than {currency} allows")
    return amount


def _no_unknown_keys(raw: Any, allowed: set[str], fail) -> None:
    if not isinstance(raw, dict):
        raise fail(None)
    for key in raw:
        if key not in allowed:
            raise fail(key)


# Abbreviations written in capitals when a description is made from a metric's name.
_ABBREVIATIONS = {"ai", "api", "cpu", "dns", "gb", "gpu", "http", "https", "io", "iops", "ip", "kb", "llm", "mb",
                  "pb", "sms", "ssl", "tb", "tls", "url", "vcpu", "vm"}


def default_description(metric: str) -> str:
    """A line's wording when the plan gives none: `api_calls` -> `API calls`, `storage_gb` -> `Storage GB`."""
    words = [w.upper() if w.lower() in _ABBREVIATIONS else w for w in metric.replace("-", "_").split("_") if w]
    if words and not words[0].isupper():
        words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) or metric
