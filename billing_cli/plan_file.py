"""Price plans as code: read and validate a plans TOML file (format: docs/plans.md).

All of the file is checked before anything is written, and every error in it is reported at once;
each names the file, the line, the plan and the price, and an unknown key or currency comes with a
"did you mean".
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import UsageError
from .money import ZERO, CurrencyError, check_currency, round_money
from .plain_text import has_control_character
from .pricing import MODELS, Price, PricePlan, Tier

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_PLAN_KEYS = {"id", "name", "currency", "base_fee", "minimum_commitment", "price", "free_metrics"}
_PRICE_KEYS = {"metric", "description", "model", "unit_price", "package_size", "tiers", "included"}
_TIER_KEYS = {"up_to", "unit_price", "flat_fee"}


class PlanFileError(UsageError):
    """A plans file that cannot be applied; exit code 2 (fix the file)."""


@dataclass
class _Errors:
    """The errors found so far: the checks go on after one, so that one run shows them all."""

    messages: list[str] = field(default_factory=list)

    def add(self, error: PlanFileError) -> None:
        self.messages.append(str(error))

    @contextmanager
    def check(self) -> Iterator[None]:
        """Record the PlanFileError a check raises and go on with the next check."""
        try:
            yield
        except PlanFileError as exc:
            self.add(exc)

    def mark(self) -> int:
        return len(self.messages)

    def since(self, mark: int) -> bool:
        return len(self.messages) > mark


def _unknown_key(key: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


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
        text = path.read_text(encoding="utf-8-sig")  # UTF-8, with or without the BOM some editors write
    except OSError as exc:
        raise PlanFileError(f"cannot read plans file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # e.g. saved as "Unicode" (UTF-16) or in a legacy code page
        raise PlanFileError(f"plans file {path} is not UTF-8: {exc.reason} at byte {exc.start}",
                            hint="Save it as UTF-8 (TOML files are UTF-8); nothing was applied.") from None
    return parse_plans(text, source=str(path))


def parse_plans(text: str, *, source: str = "plans.toml") -> list[PricePlan]:
    """Every plan of the file, or PlanFileError listing every error found (one a line)."""
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PlanFileError(f"{source}: not valid TOML: {exc}") from None
    lines = _Lines.scan(text)
    errors = _Errors()
    for key in sorted(set(document) - {"plan"}):
        errors.add(PlanFileError(f"{source}: {_unknown_key(key, {'plan'})} at the top level; plans go in "
                                 "[[plan]] tables"))
    raw_plans = document.get("plan", [])
    if not isinstance(raw_plans, list) or not raw_plans:
        errors.add(PlanFileError(f"{source}: no [[plan]] tables found"))
        raw_plans = []
    plans: list[PricePlan] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_plans):
        start = lines.plans[index] if index < len(lines.plans) else 1
        if not isinstance(raw, dict):
            errors.add(PlanFileError(f"{source}:{start}: plan #{index + 1}: plans go in [[plan]] tables"))
            continue
        plan = _plan(raw, source, lines, index, start, errors)
        if plan is None:
            continue
        if plan.id in seen:
            errors.add(PlanFileError(f"{source}:{lines.of_key(start, 'id')}: plan {plan.id!r} is defined twice"))
        seen.add(plan.id)
        plans.append(plan)
    if len(errors.messages) == 1:
        raise PlanFileError(errors.messages[0])
    if errors.messages:
        in_file_order = sorted(errors.messages, key=lambda message: _line_number(message, source))
        raise PlanFileError(f"{source}: {len(errors.messages)} errors:\n  " + "\n  ".join(in_file_order))
    return plans


def _line_number(message: str, source: str) -> int:
    """The line a message names (`<source>:<line>: …`); 0 for the file as a whole."""
    line = message.removeprefix(f"{source}:").split(":", 1)[0]
    return int(line) if line.isdigit() else 0


def _plan(raw: dict[str, Any], source: str, lines: _Lines, index: int, start: int,
          errors: _Errors) -> PricePlan | None:
    """The plan, or None when it has errors (recorded in `errors`)."""
    mark = errors.mark()
    plan_id = raw.get("id")
    where = f"{source}:{start}: plan {plan_id!r}" if isinstance(plan_id, str) else f"{source}:{start}: plan #{index + 1}"

    def fail(key: str | None, message: str) -> PlanFileError:
        line = lines.of_key(start, key) if key else start
        return PlanFileError(f"{source}:{line}: plan {plan_id!r}: {message}")

    if not isinstance(plan_id, str) or not _ID.match(plan_id):
        errors.add(PlanFileError(f"{where}: `id` must be letters, digits, '-', '_' or '.' (at most 100)"))
    for key in raw:
        if key not in _PLAN_KEYS:
            errors.add(fail(key, _unknown_key(key, _PLAN_KEYS)))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.add(fail("name", "`name` is required"))
    elif has_control_character(name):
        errors.add(fail("name", "`name` must be text without control characters"))
    currency = raw.get("currency")
    try:
        currency = check_currency(currency if isinstance(currency, str) else repr(currency))
    except CurrencyError as exc:
        errors.add(fail("currency", str(exc)))
        currency = None  # amounts are still checked, their decimals cannot be
    base_fee: Decimal | None = None  # None: invalid (already an error)
    minimum: Decimal | None = None
    with errors.check():
        base_fee = _money(raw, "base_fee", currency, fail)
    with errors.check():
        minimum = _money(raw, "minimum_commitment", currency, fail)
    prices: list[Price] = []
    raw_prices = raw.get("price", [])
    if not isinstance(raw_prices, list):
        errors.add(fail("price", "prices go in [[plan.price]] tables"))
        raw_prices = []
    metrics: set[str] = set()
    for p_index, raw_price in enumerate(raw_prices):
        known = index < len(lines.prices) and p_index < len(lines.prices[index])
        p_start = lines.prices[index][p_index] if known else start
        metric_name = raw_price.get("metric") if isinstance(raw_price, dict) else None
        price = _price(raw_price, currency, errors, lambda key, msg, s=p_start, m=metric_name: PlanFileError(
            f"{source}:{lines.of_key(s, key) if key else s}: plan {plan_id!r}, price {m!r}: {msg}"))
        if price is None:
            continue
        if price.metric in metrics:
            errors.add(PlanFileError(f"{source}:{p_start}: plan {plan_id!r}: metric {price.metric!r} is priced twice"))
        metrics.add(price.metric)
        prices.append(price)
    if not raw_prices and base_fee == 0 and minimum == 0:
        errors.add(fail(None, "the plan has no price, no base fee and no minimum commitment"))
    free = raw.get("free_metrics", [])
    if not isinstance(free, list) or not all(isinstance(m, str) and _ID.match(m) for m in free):
        errors.add(fail("free_metrics", "`free_metrics` must be a list of metric names, e.g. [\"health_checks\"]"))
        free = []
    priced_and_free = sorted(metrics & set(free))
    if priced_and_free:
        errors.add(fail("free_metrics", f"{', '.join(priced_and_free)} cannot be both priced and free"))
    if errors.since(mark):
        return None
    assert isinstance(plan_id, str) and isinstance(name, str) and currency is not None
    assert base_fee is not None and minimum is not None
    return PricePlan(plan_id, name.strip(), currency, tuple(prices), base_fee, minimum, tuple(sorted(set(free))))


def _price(raw: Any, currency: str | None, errors: _Errors, fail) -> Price | None:
    """The price, or None when it has errors (recorded in `errors`)."""
    if not isinstance(raw, dict):
        errors.add(fail(None, "a price is a [[plan.price]] table"))
        return None
    mark = errors.mark()
    for key in raw:
        if key not in _PRICE_KEYS:
            errors.add(fail(key, _unknown_key(key, _PRICE_KEYS)))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not _ID.match(metric):
        errors.add(fail("metric", "`metric` is required (letters, digits, '-', '_', '.')"))
        metric = ""
    model = raw.get("model")
    if model not in MODELS:
        close = difflib.get_close_matches(str(model), MODELS, n=1)
        errors.add(fail("model", f"unknown model {model!r}: " + (f"did you mean {close[0]!r}? " if close else "")
                        + f"use one of {', '.join(MODELS)}"))
    description = raw.get("description", default_description(metric))
    if not isinstance(description, str) or not description.strip() or has_control_character(description):
        errors.add(fail("description", "`description` must be one line of text, without control characters"))
        description = ""
    included = ZERO
    with errors.check():
        included = _amount(raw, "included", fail)
    unit_price = package_size = None
    tiers: tuple[Tier, ...] = ()
    if model in ("per_unit", "package"):
        if "unit_price" not in raw:
            errors.add(fail(None, f"a {model} price needs `unit_price`"))
        if "tiers" in raw:
            errors.add(fail("tiers", f"a {model} price has no tiers"))
        with errors.check():
            unit_price = _amount(raw, "unit_price", fail)
        if model == "package":
            with errors.check():
                package_size = _amount(raw, "package_size", fail)
                if package_size <= 0:
                    raise fail("package_size", "a package price needs `package_size` > 0")
    else:
        if model in MODELS and "unit_price" in raw:
            errors.add(fail("unit_price", f"a {model} price is priced by its tiers, not `unit_price`"))
        if model in MODELS or "tiers" in raw:  # a misspelt model's tiers are checked too
            tiers = _tiers(raw.get("tiers"), currency, errors, fail)
    if errors.since(mark):
        return None
    return Price(metric, model, description.strip(), unit_price, package_size, tiers, included)


def _tiers(raw: Any, currency: str | None, errors: _Errors, fail) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        errors.add(fail("tiers", "`tiers` must be a non-empty list of { up_to, unit_price, flat_fee }"))
        return ()
    tiers: list[Tier] = []
    previous: Decimal | None = ZERO  # None: an earlier bound is wrong, the order cannot be checked
    for number, tier in enumerate(raw, start=1):
        if not isinstance(tier, dict):
            errors.add(fail("tiers", f"tier {number} is not a table"))
            previous = None
            continue

        def tier_fail(_key: str | None, message: str, n: int = number) -> PlanFileError:
            return fail("tiers", f"tier {n}: {message}")

        for key in tier:
            if key not in _TIER_KEYS:
                errors.add(tier_fail(key, _unknown_key(key, _TIER_KEYS)))
        last = number == len(raw)
        unit_price = flat_fee = ZERO
        if "unit_price" not in tier:
            errors.add(fail("tiers", f"tier {number} needs `unit_price`"))
        else:
            with errors.check():
                unit_price = _amount(tier, "unit_price", tier_fail)
        with errors.check():
            flat_fee = _money(tier, "flat_fee", currency, tier_fail)
        up_to = None
        if "up_to" in tier:
            try:
                up_to = _amount(tier, "up_to", tier_fail)
            except PlanFileError as exc:
                errors.add(exc)
                previous = None
            else:
                if previous is not None and up_to <= previous:
                    errors.add(fail("tiers", f"tiers overlap or are not in increasing order: tier {number} "
                                             f"ends at {up_to}, not above {previous}"))
                if last:
                    errors.add(fail("tiers", "the last tier must have no `up_to` (it covers everything above)"))
                previous = up_to if previous is not None else None
        elif not last:
            errors.add(fail("tiers", f"only the last tier may omit `up_to` (tier {number} does)"))
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


def _money(raw: dict[str, Any], key: str, currency: str | None, fail) -> Decimal:
    amount = _amount(raw, key, fail)
    if currency is not None and round_money(amount, currency) != amount:
        raise fail(key, f"`{key}` = {amount} has more decimals than {currency} allows")
    return amount


# Abbreviations written in capitals when a description is made from a metric's name.
_ABBREVIATIONS = {"ai", "api", "cpu", "dns", "gb", "gpu", "http", "https", "io", "iops", "ip", "kb", "llm", "mb",
                  "pb", "sms", "ssl", "tb", "tls", "url", "vcpu", "vm"}


def default_description(metric: str) -> str:
    """A line's wording when the plan gives none: `api_calls` -> `API calls`, `storage_gb` -> `Storage GB`."""
    words = [w.upper() if w.lower() in _ABBREVIATIONS else w for w in metric.replace("-", "_").split("_") if w]
    if words and not words[0].isupper():
        words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) or metric
