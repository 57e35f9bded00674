"""A local, stateful fake of the Stripe API (v1) for customers, invoices and invoice items.

The production code talks to it through the real `stripe` SDK, only pointed elsewhere:

    with FakeStripeServer() as fake:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.base_url})

so the server speaks Stripe's wire format (what stripe-python sends and parses):

- requests: `Authorization: Bearer <key>` (or Basic with the key as user name), form-encoded
  POST bodies and GET query strings with bracket-nested keys (`metadata[k]=v`, `expand[0]=x`,
  `expand[]=x`), `Idempotency-Key` and `Stripe-Version` headers;
- responses: JSON objects shaped like Stripe's (`id`, `object`, `livemode: false`, `created`,
  `metadata`, list objects with `data`/`has_more`/`url`), errors as
  `{"error": {"type", "message", "code", "param", "doc_url"}}` with Stripe's HTTP statuses
  (400 bad request, 401 bad key, 404 unknown object or URL, 429 rate limited, 5xx), and the
  `Request-Id`, `Stripe-Version`, `Idempotency-Key`, `Idempotent-Replayed` and `Original-Request`
  response headers.

Endpoints: `POST/GET /v1/customers`, `GET /v1/customers/search`, `GET/POST /v1/customers/{id}`; `POST/GET /v1/tax_rates`,
`GET /v1/tax_rates/{id}`; `POST/GET /v1/invoices`,
`GET /v1/invoices/{id}`, `GET /v1/invoices/{id}/lines`, `POST /v1/invoices/{id}/finalize`,
`.../send`, `.../void`, `.../add_lines` (lines with `tax_rates` or `tax_amounts`);
`POST/GET /v1/invoiceitems`, `GET /v1/invoiceitems/{id}`.

Modelled Stripe behaviour:

- unknown parameters, missing or malformed ones (integers, booleans, enums, currencies, metadata
  limits) are refused with 400 like Stripe does, so a typo in production code fails in tests;
- invoices: draft -> open (finalize keeps the `number` given at creation, unique in the account,
  or assigns customer `invoice_prefix`-sequence) -> void; sending a draft finalizes it first;
  items only on draft invoices of the same customer and currency; `add_lines` adds every line or
  none, to a draft only; totals recomputed from the lines; `pending_invoice_items_behavior=include`
  pulls the customer's pending items; at most 250 items an invoice (400 beyond);
- invoice items take `amount`, or `quantity` x `unit_amount_decimal` (rounded half-up); the
  pre-2025-03-31 `unit_amount` is accepted only when the request's `Stripe-Version` is older;
- idempotency: a POST's first result is saved under its `Idempotency-Key` and replayed byte for
  byte (header `Idempotent-Replayed: true`) for the same method, path and parameters; the same
  key with other parameters or another endpoint -> 400 `idempotency_error`. As Stripe documents,
  requests refused before the endpoint ran (bad key, rate limit, parameter validation, injected
  faults) save nothing, so a retry runs for real. Keys never expire by themselves;
  `forget_idempotency_keys()` models the 24 h expiry;
- lists: newest first (invoice lines oldest first), `limit` 1..100 (default 10),
  `starting_after`/`ending_before`, `has_more`; `expand` for `customer` and `invoice` fields.

Fault injection and inspection (Python methods, thread-safe): `fail_next()`, `drop_next()`,
`latency`, `rate_limit_per_second`/`rejected_429`, `requests`, `customers`, `invoices`,
`invoice_items`, `sent_invoices`, `snapshot()`, `reset()`.

What the SDK does with faults (stripe-python 16): it retries connection errors, 409 and 5xx, and
anything carrying `Stripe-Should-Retry: true`, but NOT a plain 429; real Stripe marks only
lock-timeout 429s as retryable, hence `fail_next(..., 429, should_retry=True)`.

Modelled as Stripe documents it: an invoice whose amount due is 0 is paid on finalization; items
may be negative (a credit), the invoice's total is the sum of its lines plus their taxes.

Taxes (Tax Rates, docs "Tax rates and IDs"): exclusive TaxRates (`POST /v1/tax_rates`, immutable
percentage) attached to lines (`add_lines` `lines[][tax_rates][]`, up to 5 a line). Each line's
tax per rate is its amount x percentage, rounded half-up (away from zero) to the currency's unit:
Stripe's default "line-item" tax rounding. `tax_rounding = "invoice"` models the account setting
that rounds tax at the invoice level instead: per rate, the sum of its lines' amounts x
percentage, rounded once (the line taxes then add up to that). The invoice's `total_taxes` lists
each rate's amount and taxable amount, and `total` = `subtotal` + the taxes. Inclusive rates,
`default_tax_rates` and `automatic_tax` (Stripe Tax) are not modelled.

Taxes calculated outside Stripe (docs "Use tax amounts calculated outside of Stripe", the API's
`lines[][tax_amounts][]` of `add_lines`, in stripe-python 16's API version): up to 20 a line, each an
`amount` and a `taxable_amount` (integers in the currency's API unit; assumed, as Stripe's reference
says neither: the amount must be chargeable like any other, and may be negative on a credit line), an
optional `taxability_reason` and a `tax_rate_data` hash (`display_name`, `inclusive` and
`percentage` required). Stripe takes the amounts as they are: the line's `taxes` are exactly them,
nothing is computed or rounded, whatever `tax_rounding` says. For each `tax_rate_data` it finds the
TaxRate made from exactly the same data before, or creates one, archived (`active: false`): it is
not listed in the line's `tax_rates` and cannot be applied to a line. Tax amounts are refused (400)
on an invoice where a line has `tax_rates`.

Not modelled: payments (`pay`, or charging a payment method), deleting
or updating objects, automatic advancement of `auto_advance` invoices, e-mails and webhooks
(`send` only records the send in `sent_invoices`), discounts, prices/products, live vs
test mode separation (only test keys are accepted by default), concurrent use of one idempotency
key (Stripe answers 409; here the second request waits and is replayed), per-endpoint rate limits,
and the exact wording of Stripe's error messages. Objects carry the commonly used fields, not
every field of the API reference.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

Obj = dict[str, Any]
Params = dict[str, Any]

DEFAULT_API_VERSION = "2025-03-31.basil"
"""What the fake assumes (and echoes) when a request carries no `Stripe-Version` header."""

_PRICING_API_VERSION = "2025-03-31"  # basil: invoice items lost `unit_amount`
_ERROR_DOCS = "https://stripe.com/docs/error-codes/"
_MAX_METADATA_KEYS, _MAX_METADATA_KEY, _MAX_METADATA_VALUE = 50, 40, 500
_LINES_EMBEDDED = 10  # invoice.lines carries the first 10 lines, like Stripe


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """A Stripe error answer. `saved`: whether an idempotency key keeps it (the endpoint ran)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, saved: bool = True,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.saved = code, param, saved
        self.headers = headers or {}

    def body(self) -> Obj:
        error: Obj = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = _ERROR_DOCS + self.code.replace("_", "-")
        if self.param:
            error["param"] = self.param
        return {"error": error}


def _param_error(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A malformed request: refused before the endpoint runs, so no idempotent result is saved."""
    return ApiError(400, message, code=code, param=param, saved=False)


def _no_such(kind: str, obj_id: str, param: str, status: int = 400) -> ApiError:
    return ApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


# --- form decoding and parameter parsing ------------------------------------------------------

_KEY_HEAD = re.compile(r"[^\[\]]+")
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def _split_key(raw: str) -> list[str]:
    head = _KEY_HEAD.match(raw)
    if head is None:
        raise _param_error(f"Invalid parameter name: {raw}")
    rest = raw[head.end():]
    parts = _KEY_PART.findall(rest)
    if "".join(f"[{p}]" for p in parts) != rest:
        raise _param_error(f"Invalid parameter name: {raw}")
    return [head.group(), *parts]


def decode_form(text: str) -> Params:
    """`a[b][c]=1&d[]=x&d[]=y` -> {"a": {"b": {"c": "1"}}, "d": {"0": "x", "1": "y"}}.

    Arrays stay dicts keyed "0", "1", ... (Stripe's `[0]` and `[]` forms alike); getters that
    expect an array turn them into lists, so a metadata key "0" stays a key.
    """
    root: Params = {}
    for raw_key, value in parse_qsl(text, keep_blank_values=True):
        parts = _split_key(raw_key)
        node = root
        for depth, part in enumerate(parts):
            name = parts[0] + "".join(f"[{p}]" for p in parts[1:depth + 1])
            if part == "":
                part = str(len(node))
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise _param_error(f"Invalid hash: {name} is both a value and a hash", name)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise _param_error(f"Invalid hash: {name} is both a value and a hash", name)
                node = child
    return root


def _check_known(params: Params, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for name in params:
        if name not in known:
            raise _param_error(f"Received unknown parameter: {name}", name, "parameter_unknown")


def _string(params: Params, name: str, *, required: bool = False,
            max_length: int = 5000) -> str | None:
    """A string parameter; an empty string means "not set", as in Stripe's form encoding."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _param_error(f"Missing required param: {name}.", name, "parameter_missing")
        return None
    if not isinstance(value, str):
        raise _param_error(f"Invalid string: {value!r}", name)
    if len(value) > max_length:
        raise _param_error(f"Invalid string: {name} must be at most {max_length} characters",
                           name)
    return value


def _integer(params: Params, name: str, *, minimum: int | None = None,
             maximum: int | None = None) -> int | None:
    text = _string(params, name)
    if text is None:
        return None
    if not re.fullmatch(r"-?\d+", text):
        raise _param_error(f"Invalid integer: {text}", name, "parameter_invalid_integer")
    value = int(text)
    if minimum is not None and value < minimum:
        raise _param_error(f"This value must be greater than or equal to {minimum}.", name)
    if maximum is not None and value > maximum:
        raise _param_error(f"This value must be less than or equal to {maximum}.", name)
    return value


# Stripe's amount rules (docs: Supported currencies, "Special cases"): ISK amounts are whole
# krónur in hundredths, and three-decimal currencies need a last digit of 0.
_STEP = {"isk": 100, "bhd": 10, "jod": 10, "kwd": 10, "omr": 10, "tnd": 10}


def _check_chargeable(amount: int, currency: str) -> None:
    step = _STEP.get(currency.lower(), 1)
    if amount % step:
        raise _param_error(f"Invalid amount. Currency {currency.upper()} amounts must be evenly divisible by {step}.",
                           "amount", "invalid_charge_amount_no_decimal_compatible")


def _boolean(params: Params, name: str) -> bool | None:
    text = _string(params, name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise _param_error(f"Invalid boolean: {text}", name)
    return text == "true"


def _choice(params: Params, name: str, choices: tuple[str, ...]) -> str | None:
    text = _string(params, name)
    if text is not None and text not in choices:
        raise _param_error(f"Invalid {name}: must be one of {', '.join(choices)}", name)
    return text


def _decimal(params: Params, name: str) -> Decimal | None:
    text = _string(params, name)
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value.as_tuple().exponent < -12:  # type: ignore[operator]
        raise _param_error(f"Invalid decimal: {text}", name)
    return value


def _currency(params: Params) -> str | None:
    text = _string(params, "currency")
    if text is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", text):
        raise _param_error(f"Invalid currency: {text}", "currency")
    return text.lower()


def _email(params: Params) -> str | None:
    text = _string(params, "email", max_length=512)
    if text is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise _param_error(f"Invalid email address: {text}", "email", "email_invalid")
    return text


def _metadata(params: Params) -> dict[str, str]:
    """`metadata[k]=v` pairs; empty values are dropped (they unset keys on Stripe)."""
    value = params.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _param_error("Invalid hash: metadata must be a hash of keys to values", "metadata")
    if len(value) > _MAX_METADATA_KEYS:
        raise _param_error(f"Metadata can have up to {_MAX_METADATA_KEYS} keys", "metadata")
    result: dict[str, str] = {}
    for key, item in value.items():
        param = f"metadata[{key}]"
        if not isinstance(item, str):
            raise _param_error(f"Invalid value for {param}: metadata values must be strings",
                               param)
        if len(key) > _MAX_METADATA_KEY:
            raise _param_error(f"Metadata keys can have up to {_MAX_METADATA_KEY} characters, "
                               f"but {key!r} has {len(key)}", param)
        if len(item) > _MAX_METADATA_VALUE:
            raise _param_error(f"Metadata values can have up to {_MAX_METADATA_VALUE} characters",
                               param)
        if item:
            result[key] = item
    return result


def _expand(params: Params, kind: str) -> list[str]:
    """The `expand` paths, each checked against what a `kind` object (or "list:kind") has."""
    value = params.get("expand")
    if value is None or value == "":
        return []
    if not isinstance(value, dict) or not all(k.isdigit() for k in value):
        raise _param_error("Invalid array: expand must be an array of strings", "expand")
    paths = [value[k] for k in sorted(value, key=int)]
    for path in paths:
        if not isinstance(path, str) or not _expandable(kind, path.split(".")):
            raise _param_error(f"This property cannot be expanded ({path}).", "expand")
    return paths


_EXPANDABLE: dict[str, dict[str, str]] = {  # object kind -> field -> kind of the referenced object
    "invoice": {"customer": "customer"},
    "invoiceitem": {"customer": "customer", "invoice": "invoice"},
}
_TABLES = {"customer": "customers", "invoice": "invoices", "invoiceitem": "invoice_items",
           "credit_note": "credit_notes", "tax_rate": "tax_rates"}
_PREFIXES = {"customer": "cus", "invoice": "in", "invoiceitem": "ii", "line_item": "il", "credit_note": "cn",
             "tax_rate": "txr"}
_TAX_TYPES = ("amusement_tax", "communications_tax", "gst", "hst", "igst", "jct", "lease_tax", "pst", "qst",
              "retail_delivery_fee", "rst", "sales_tax", "service_tax", "vat")
_MAX_TAX_RATES_PER_LINE = 5
_MAX_TAX_AMOUNTS_PER_LINE = 20
_TAXABILITY_REASONS = ("customer_exempt", "not_collecting", "not_subject_to_tax", "not_supported",
                       "portion_product_exempt", "portion_reduced_rated", "portion_standard_rated", "product_exempt",
                       "product_exempt_holiday", "proportionally_rated", "reduced_rated", "reverse_charge",
                       "standard_rated", "taxable_basis_reduced", "zero_rated")
_JURISDICTION_LEVELS = ("city", "country", "county", "district", "multiple", "state")


def _expandable(kind: str, parts: list[str]) -> bool:
    if kind.startswith("list:"):
        return len(parts) > 1 and parts[0] == "data" and _expandable(kind[5:], parts[1:])
    target = _EXPANDABLE.get(kind, {}).get(parts[0])
    return target is not None and (len(parts) == 1 or _expandable(target, parts[1:]))


def _period(params: Params) -> Obj | None:
    value = params.get("period")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _param_error("Invalid hash: period", "period")
    _check_known(value, ("start", "end"))
    start = _integer(value, "start")
    end = _integer(value, "end")
    if start is None or end is None:
        raise _param_error("Missing required param: period[start] and period[end].",
                           "period", "parameter_missing")
    if end < start:
        raise _param_error("period[end] must be after period[start]", "period[end]")
    return {"start": start, "end": end}


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _tax_rate_fields(p: Params, prefix: str = "") -> Obj:
    """The fields of a TaxRate from `POST /v1/tax_rates` or a `tax_rate_data` hash (`prefix`: its
    parameter name, for the errors). Exclusive rates only."""
    display_name = _string(p, "display_name", required=True, max_length=50)
    inclusive = _boolean(p, "inclusive")
    if inclusive is None:
        raise _param_error(f"Missing required param: {prefix}inclusive.", f"{prefix}inclusive", "parameter_missing")
    if inclusive:
        raise _param_error("This fake models exclusive tax rates only (inclusive=false).", f"{prefix}inclusive")
    if _string(p, "percentage") is None:
        raise _param_error(f"Missing required param: {prefix}percentage.", f"{prefix}percentage", "parameter_missing")
    percentage = _decimal(p, "percentage")
    assert percentage is not None
    if not 0 <= percentage <= 100 or percentage.as_tuple().exponent < -4:  # type: ignore[operator]
        raise _param_error("Invalid percentage: between 0 and 100, at most 4 decimals.", f"{prefix}percentage")
    country = _string(p, "country")
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        raise _param_error(f"Invalid country: {country}", f"{prefix}country")
    return {"country": country, "description": _string(p, "description"), "display_name": display_name,
            "jurisdiction": _string(p, "jurisdiction", max_length=50),
            "jurisdiction_level": _choice(p, "jurisdiction_level", _JURISDICTION_LEVELS), "percentage": percentage,
            "state": _string(p, "state", max_length=64), "tax_type": _choice(p, "tax_type", _TAX_TYPES)}


def _tax_amounts(raw: Any, param: str, currency: str) -> list[Obj]:
    """A line's `tax_amounts[]` (taxes calculated outside Stripe, at most 20), checked: each an
    `amount`, a `taxable_amount`, an optional `taxability_reason` and the `tax_rate_data` of its rate."""
    if raw is None or raw == "":
        return []
    if not isinstance(raw, dict) or not all(k.isdigit() for k in raw):
        raise _param_error(f"Invalid array: {param} must be an array of hashes", param)
    if len(raw) > _MAX_TAX_AMOUNTS_PER_LINE:
        raise _param_error(f"A line can have at most {_MAX_TAX_AMOUNTS_PER_LINE} tax amounts.", param)
    amounts = []
    for index in sorted(raw, key=int):
        entry, where = raw[index], f"{param}[{index}]"
        if not isinstance(entry, dict):
            raise _param_error(f"Invalid hash: {where}", where)
        _check_known(entry, ("amount", "taxable_amount", "taxability_reason", "tax_rate_data"))
        amount, taxable = _integer(entry, "amount"), _integer(entry, "taxable_amount")
        for name, value in (("amount", amount), ("taxable_amount", taxable)):
            if value is None:
                raise _param_error(f"Missing required param: {where}[{name}].", f"{where}[{name}]", "parameter_missing")
        _check_chargeable(amount or 0, currency)
        data = entry.get("tax_rate_data")
        if not isinstance(data, dict):
            raise _param_error(f"Missing required param: {where}[tax_rate_data].", f"{where}[tax_rate_data]",
                               "parameter_missing")
        _check_known(data, ("display_name", "inclusive", "percentage", "country", "description", "jurisdiction",
                            "jurisdiction_level", "state", "tax_type"))
        amounts.append({"amount": amount, "taxable_amount": taxable,
                        "taxability_reason": _choice(entry, "taxability_reason", _TAXABILITY_REASONS),
                        "tax_rate_data": _tax_rate_fields(data, f"{where}[tax_rate_data]")})
    return amounts


# --- the account: objects and endpoint logic -------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One API call as the endpoints see it."""

    params: Params
    path_id: str | None
    api_version: str

    @property
    def legacy_pricing(self) -> bool:
        return self.api_version[:10] < _PRICING_API_VERSION


_LIST_PARAMS = ("limit", "starting_after", "ending_before", "expand")


class _Account:
    """The fake Stripe account's objects and what each endpoint does. Callers hold the lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.tax_rounding = "line_item"  # Stripe's default; "invoice": the account rounds tax per invoice
        self.tax_rates: dict[str, Obj] = {}
        self._rates_by_data: dict[str, str] = {}  # TaxRates made from a line's `tax_rate_data`, by that data
        self.customers: dict[str, Obj] = {}
        self.invoices: dict[str, Obj] = {}
        self.invoice_items: dict[str, Obj] = {}
        self.credit_notes: dict[str, Obj] = {}
        self.sent_invoices: dict[str, list[int]] = {}
        self._order: dict[str, int] = {}  # creation order of every object, for lists/cursors
        self._counters: dict[str, int] = {}

    def _now(self) -> int:
        return int(self._clock())

    def _new_id(self, prefix: str) -> str:
        number = self._counters[prefix] = self._counters.get(prefix, 0) + 1
        obj_id = f"{prefix}_{number:06d}"
        self._order[obj_id] = len(self._order)
        return obj_id

    def _find(self, table: dict[str, Obj], obj_id: str, kind: str, param: str,
              status: int = 400) -> Obj:
        obj = table.get(obj_id)
        if obj is None:
            raise _no_such(kind, obj_id, param, status)
        return obj

    # rendering: copies, embedded-list truncation, expansion

    def render(self, obj: Obj, expand: list[str]) -> Obj:
        out = copy.deepcopy(obj)
        self._truncate_lines(out)
        for path in expand:
            self._expand_path(out, path.split("."))
        return out

    def _truncate_lines(self, obj: Obj) -> None:
        if obj.get("object") == "list":
            for item in obj["data"]:
                self._truncate_lines(item)
        elif obj.get("object") == "invoice":
            lines = obj["lines"]
            lines["has_more"] = len(lines["data"]) > _LINES_EMBEDDED
            lines["data"] = lines["data"][:_LINES_EMBEDDED]

    def _expand_path(self, obj: Obj, parts: list[str]) -> None:
        """Replace the id at `parts` by the object (paths were checked by `_expand`)."""
        if obj.get("object") == "list":
            for item in obj["data"]:
                self._expand_path(item, parts[1:])
            return
        value = obj.get(parts[0])
        if isinstance(value, str):
            kind = _EXPANDABLE[obj["object"]][parts[0]]
            target = getattr(self, _TABLES[kind]).get(value)
            value = obj[parts[0]] = self.render(target, []) if target is not None else value
        if len(parts) > 1 and isinstance(value, dict):
            self._expand_path(value, parts[1:])

    def _page(self, objs: Iterable[Obj], params: Params, url: str, kind: str, *,
              newest_first: bool = True) -> Obj:
        """A Stripe list object over `objs` (of `kind`, e.g. "invoice"), honouring `limit`,
        `starting_after` and `ending_before` (a cursor must be a `kind` object's id)."""
        limit = _integer(params, "limit", minimum=1, maximum=100) or 10
        after, before = _string(params, "starting_after"), _string(params, "ending_before")
        if after and before:
            raise _param_error("You may only specify one of these parameters: "
                               "ending_before, starting_after.", "starting_after")
        sign = -1 if newest_first else 1
        ordered = sorted(objs, key=lambda o: sign * self._order[o["id"]])
        if after or before:
            cursor_id = after or before
            if cursor_id not in self._order or not cursor_id.startswith(_PREFIXES[kind] + "_"):
                raise _no_such(kind, cursor_id, "starting_after" if after else "ending_before")
            cursor = sign * self._order[cursor_id]
            if after:
                ordered = [o for o in ordered if sign * self._order[o["id"]] > cursor]
            else:
                ordered = [o for o in ordered if sign * self._order[o["id"]] < cursor]
                return {"object": "list", "data": ordered[-limit:],
                        "has_more": len(ordered) > limit, "url": url}
        return {"object": "list", "data": ordered[:limit], "has_more": len(ordered) > limit,
                "url": url}

    # customers

    def create_customer(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("email", "name", "description", "phone", "metadata", "expand"))
        email, name = _email(p), _string(p, "name", max_length=256)
        description, phone = _string(p, "description"), _string(p, "phone", max_length=20)
        metadata, expand = _metadata(p), _expand(p, "customer")
        customer_id = self._new_id("cus")
        customer: Obj = {
            "id": customer_id, "object": "customer", "address": None, "balance": 0,
            "created": self._now(), "currency": None, "default_source": None,
            "delinquent": False, "description": description, "discount": None, "email": email,
            "invoice_prefix": f"FAKE{self._counters['cus']:04X}",
            "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                                 "footer": None, "rendering_options": None},
            "livemode": False, "metadata": metadata, "name": name, "next_invoice_sequence": 1,
            "phone": phone, "preferred_locales": [], "shipping": None, "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[customer["id"]] = customer
        return self.render(customer, expand)

    def update_customer(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("email", "name", "description", "phone", "metadata", "expand"))
        customer = self._find(self.customers, call.path_id or "", "customer", "id", 404)
        for name, value in (("email", _email(p)), ("name", _string(p, "name", max_length=256)),
                            ("description", _string(p, "description"))):
            if value is not None:
                customer[name] = value
        customer["metadata"].update(_metadata(p))
        return self.render(customer, _expand(p, "customer"))

    def retrieve_customer(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        customer = self._find(self.customers, call.path_id or "", "customer", "id", 404)
        return self.render(customer, _expand(call.params, "customer"))

    def list_customers(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("email", *_LIST_PARAMS))
        email = _string(p, "email", max_length=512)
        matches = [c for c in self.customers.values() if email is None or c["email"] == email]
        expand = _expand(p, "list:customer")
        return self.render(self._page(matches, p, "/v1/customers", "customer"), expand)

    def search_customers(self, call: _Call) -> Obj:
        """Stripe's Search API for customers (docs "Search query language"), for the clauses
        `email:'x'` and `metadata['key']:'x'` (exact match), joined by AND: a search result of
        `limit` (1..100, default 10) objects, newest first, paged by `page`/`next_page`. Stripe's
        own search lags writes by up to a minute (not modelled: found at once)."""
        p = call.params
        _check_known(p, ("query", "limit", "page", "expand"))
        query = _string(p, "query", required=True) or ""
        clauses = []
        for clause in re.split(r"\s+AND\s+", query.strip()):
            match = _SEARCH_CLAUSE.fullmatch(clause)
            if match is None:
                raise _param_error(f"Invalid query: {query}", "query")
            value = re.sub(r"\\(.)", r"\1", match["value"][1:-1])
            clauses.append((match["key"], value))
        limit = _integer(p, "limit", minimum=1, maximum=100) or 10
        page = _string(p, "page")
        start = 0
        if page is not None:
            if not page.isdigit():
                raise _param_error(f"Invalid page: {page}", "page")
            start = int(page)

        def field(customer: Obj, key: str) -> Any:
            return customer["metadata"].get(key[len("metadata['"):-2]) if key.startswith("metadata[") \
                else customer.get(key)

        def matches(customer: Obj) -> bool:
            return all(field(customer, key) == value for key, value in clauses)

        found = sorted((c for c in self.customers.values() if matches(c)), key=lambda c: -self._order[c["id"]])
        data = found[start:start + limit]
        more = len(found) > start + limit
        return self.render({"object": "search_result", "data": data, "has_more": more,
                            "next_page": str(start + limit) if more else None, "url": "/v1/customers/search"},
                           _expand(p, "list:customer"))

    # invoices

    def create_invoice(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("customer", "collection_method", "days_until_due", "due_date",
                         "auto_advance", "currency", "description", "footer", "metadata", "number",
                         "pending_invoice_items_behavior", "expand"))
        number = _string(p, "number", max_length=26)
        if number is not None and any(i["number"] == number for i in self.invoices.values()):
            raise ApiError(400, f"Invoice number {number} is already in use: numbers are unique in an account.",
                           code="invoice_number_taken", param="number")
        customer_id = _string(p, "customer", required=True) or ""
        method = _choice(p, "collection_method", ("charge_automatically", "send_invoice"))
        method = method or "charge_automatically"
        days = _integer(p, "days_until_due", minimum=0, maximum=3650)
        due_date = _integer(p, "due_date", minimum=0)
        auto_advance = _boolean(p, "auto_advance")
        currency = _currency(p)
        description, footer = _string(p, "description"), _string(p, "footer")
        metadata, expand = _metadata(p), _expand(p, "invoice")
        pending = _choice(p, "pending_invoice_items_behavior", ("exclude", "include"))
        self._check_due(method, days, due_date)
        customer = self._find(self.customers, customer_id, "customer", "customer")
        now = self._now()
        if days is not None:
            due_date = now + days * 86400
        invoice = self._new_invoice(customer, now, method, due_date, currency)
        invoice.update(auto_advance=bool(auto_advance), description=description, footer=footer,
                       metadata=metadata, number=number)
        self.invoices[invoice["id"]] = invoice
        if pending == "include":
            for item in self._pending_items(customer_id, invoice["currency"]):
                self._attach(invoice, item)
        return self.render(invoice, expand)

    @staticmethod
    def _check_due(method: str, days: int | None, due_date: int | None) -> None:
        if days is not None and due_date is not None:
            raise _param_error("You may only specify one of these parameters: "
                               "days_until_due, due_date.", "days_until_due")
        if method == "send_invoice" and days is None and due_date is None:
            raise _param_error("Missing required param: days_until_due (or due_date) when "
                               "collection_method is send_invoice.", "days_until_due",
                               "parameter_missing")
        if method == "charge_automatically" and (days is not None or due_date is not None):
            raise _param_error("days_until_due and due_date can only be set when "
                               "collection_method is send_invoice.",
                               "days_until_due" if days is not None else "due_date")

    def _new_invoice(self, customer: Obj, now: int, method: str, due_date: int | None,
                     currency: str | None) -> Obj:
        invoice_id = self._new_id("in")
        return {
            "id": invoice_id, "object": "invoice", "account_country": "US",
            "amount_due": 0, "amount_overpaid": 0, "amount_paid": 0, "amount_remaining": 0,
            "amount_shipping": 0, "attempt_count": 0, "attempted": False, "auto_advance": False,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_reason": "manual", "collection_method": method, "created": now,
            "currency": currency or customer["currency"] or "usd",
            "customer": customer["id"], "customer_email": customer["email"],
            "customer_name": customer["name"], "default_payment_method": None,
            "description": None, "discounts": [],
            "due_date": due_date, "effective_at": None, "ending_balance": None, "footer": None,
            "hosted_invoice_url": None, "invoice_pdf": None, "issuer": {"type": "self"},
            "last_finalization_error": None,
            "lines": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                      "url": f"/v1/invoices/{invoice_id}/lines"},
            "livemode": False, "metadata": {}, "next_payment_attempt": None, "number": None,
            "parent": None, "period_end": now, "period_start": now,
            "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
            "receipt_number": None, "starting_balance": 0, "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None,
                                   "paid_at": None, "voided_at": None},
            "subtotal": 0, "subtotal_excluding_tax": 0, "test_clock": None, "total": 0,
            "total_discount_amounts": [], "total_excluding_tax": 0, "total_taxes": [],
            "webhooks_delivered_at": None,
        }

    def _pending_items(self, customer_id: str, currency: str) -> list[Obj]:
        return [i for i in self.invoice_items.values()
                if i["customer"] == customer_id and i["invoice"] is None
                and i["currency"] == currency]

    def _attach(self, invoice: Obj, item: Obj, taxes: list[Obj] | None = None) -> None:
        """`taxes`: the line's `tax_amounts` as Stripe shows them (they live on the line, not the item)."""
        item["invoice"] = invoice["id"]
        line = {
            "id": self._new_id("il"), "object": "line_item", "amount": item["amount"],
            "currency": item["currency"], "description": item["description"],
            "discount_amounts": [], "discountable": item["discountable"], "discounts": [],
            "invoice": invoice["id"], "livemode": False, "metadata": dict(item["metadata"]),
            "parent": {"type": "invoice_item_details",
                       "invoice_item_details": {"invoice_item": item["id"], "proration": False,
                                                "proration_details": {"credited_items": None},
                                                "subscription": None},
                       "subscription_item_details": None},
            "period": dict(item["period"]), "pretax_credit_amounts": [],
            "pricing": copy.deepcopy(item["pricing"]), "quantity": item["quantity"],
            "subscription": None, "subtotal": item["amount"], "taxes": taxes or [],
            "tax_rates": [rate["id"] for rate in item.get("tax_rates", [])],
        }
        invoice["lines"]["data"].append(line)
        self._recompute(invoice)

    def _recompute(self, invoice: Obj) -> None:
        lines = invoice["lines"]
        subtotal = sum(line["amount"] for line in lines["data"])
        tax = self._compute_taxes(invoice)
        total = subtotal + tax
        due = max(total - invoice["amount_paid"], 0)
        lines["total_count"] = len(lines["data"])
        invoice.update(subtotal=subtotal, subtotal_excluding_tax=subtotal, total=total,
                       total_excluding_tax=subtotal, amount_due=due, amount_remaining=due)

    def _compute_taxes(self, invoice: Obj) -> int:
        """Each line's taxes and the invoice's `total_taxes`; returns the invoice's tax. The taxes of
        lines with TaxRates are computed here; those of lines with `tax_amounts` are kept as given."""
        def rounded(value: Decimal) -> int:  # the currency's unit, half away from zero (Stripe's integers)
            return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))

        per_rate: dict[str, list[Obj]] = {}
        for line in invoice["lines"]["data"]:
            if line.get("tax_rates"):
                line["taxes"] = []
            for rate_id in line.get("tax_rates", []):
                per_rate.setdefault(rate_id, []).append(line)
        for rate_id, lines in per_rate.items():
            percentage = Decimal(self.tax_rates[rate_id]["percentage_decimal"])
            amounts = [rounded(Decimal(line["amount"]) * percentage / 100) for line in lines]
            if self.tax_rounding == "invoice":  # rounded once on the sum; the last line takes the difference
                whole = rounded(Decimal(sum(line["amount"] for line in lines)) * percentage / 100)
                amounts[-1] += whole - sum(amounts)
            for line, amount in zip(lines, amounts):
                line["taxes"].append({"amount": amount, "tax_behavior": "exclusive",
                                      "tax_rate_details": {"tax_rate": rate_id},
                                      "taxability_reason": "standard_rated", "taxable_amount": line["amount"],
                                      "type": "tax_rate_details"})
        totals: dict[str, Obj] = {}  # per TaxRate, in the order the lines first use them
        for line in invoice["lines"]["data"]:
            for tax in line["taxes"]:
                total = totals.setdefault(tax["tax_rate_details"]["tax_rate"], {**tax, "amount": 0, "taxable_amount": 0})
                total["amount"] += tax["amount"]
                total["taxable_amount"] += tax["taxable_amount"]
        invoice["total_taxes"] = list(totals.values())
        return sum(t["amount"] for t in totals.values())

    # tax rates

    def create_tax_rate(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("display_name", "inclusive", "percentage", "active", "country", "description",
                         "jurisdiction", "jurisdiction_level", "metadata", "state", "tax_type", "expand"))
        rate = self._new_tax_rate(_tax_rate_fields(p), active=_boolean(p, "active") is not False,
                                  metadata=_metadata(p))
        return self.render(rate, [])

    def _new_tax_rate(self, fields: Obj, *, active: bool, metadata: dict[str, str]) -> Obj:
        rate_id = self._new_id("txr")
        percentage = fields.pop("percentage")
        rate: Obj = {
            "id": rate_id, "object": "tax_rate", "active": active, "created": self._now(),
            "effective_percentage": float(percentage), "flat_amount": None, "inclusive": False, "livemode": False,
            "metadata": metadata, "percentage": float(percentage), "percentage_decimal": _decimal_text(percentage),
            "rate_type": "percentage", **fields,
        }
        self.tax_rates[rate_id] = rate
        return rate

    def retrieve_tax_rate(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        return self.render(self._find(self.tax_rates, call.path_id or "", "tax rate", "id", 404), [])

    def list_tax_rates(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("active", "inclusive", *_LIST_PARAMS))
        active = _boolean(p, "active")
        matches = [r for r in self.tax_rates.values() if active is None or r["active"] == active]
        return self.render(self._page(matches, p, "/v1/tax_rates", "tax_rate"), [])

    def retrieve_invoice(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        return self.render(invoice, _expand(call.params, "invoice"))

    def list_invoices(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("customer", "status", "collection_method", *_LIST_PARAMS))
        customer = _string(p, "customer")
        status = _choice(p, "status", ("draft", "open", "paid", "uncollectible", "void"))
        method = _choice(p, "collection_method", ("charge_automatically", "send_invoice"))
        matches = [i for i in self.invoices.values()
                   if (customer is None or i["customer"] == customer)
                   and (status is None or i["status"] == status)
                   and (method is None or i["collection_method"] == method)]
        expand = _expand(p, "list:invoice")
        return self.render(self._page(matches, p, "/v1/invoices", "invoice"), expand)

    def list_invoice_lines(self, call: _Call) -> Obj:
        _check_known(call.params, _LIST_PARAMS)
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        page = self._page(invoice["lines"]["data"], call.params,
                          f"/v1/invoices/{invoice['id']}/lines", "line_item",
                          newest_first=False)
        return self.render(page, _expand(call.params, "list:line_item"))

    def finalize_invoice(self, call: _Call) -> Obj:
        _check_known(call.params, ("auto_advance", "expand"))
        auto_advance = _boolean(call.params, "auto_advance")
        expand = _expand(call.params, "invoice")
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        if invoice["status"] != "draft":
            raise ApiError(400, "This invoice is already finalized, you can't re-finalize a "
                                "non-draft invoice.", code="invoice_not_editable")
        self._finalize(invoice)
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        return self.render(invoice, expand)

    def _finalize(self, invoice: Obj) -> None:
        customer = self.customers[invoice["customer"]]
        number = invoice["number"]
        if number is None:
            number = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
            customer["next_invoice_sequence"] += 1
        now = self._now()
        invoice.update(status="open", number=number,
                       effective_at=now, ending_balance=0, customer_email=customer["email"],
                       customer_name=customer["name"],
                       hosted_invoice_url=f"https://invoice.stripe.test/i/{invoice['id']}",
                       invoice_pdf=f"https://pay.stripe.test/invoice/{invoice['id']}/pdf")
        invoice["status_transitions"]["finalized_at"] = now
        balance = customer["balance"]  # negative: credit the customer has (e.g. from a credit note)
        applied = min(-balance, invoice["amount_due"]) if balance < 0 else 0
        customer["balance"] = balance + applied
        invoice.update(starting_balance=balance, ending_balance=customer["balance"],
                       amount_due=invoice["amount_due"] - applied, amount_remaining=invoice["amount_due"] - applied)
        if invoice["amount_due"] == 0:  # as Stripe does: nothing to collect, paid on finalization
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now

    def send_invoice(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        expand = _expand(call.params, "invoice")
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        if invoice["collection_method"] != "send_invoice":
            raise ApiError(400, "You can only manually send an invoice if its collection "
                                "method is 'send_invoice'.")
        if invoice["status"] == "draft":  # "Stripe automatically finalizes drafts before sending"
            self._finalize(invoice)
        if invoice["status"] not in ("open", "paid"):
            raise ApiError(400, f"You can only send a finalized invoice (open or paid); "
                                f"invoice {invoice['id']} is {invoice['status']}.",
                           code="invoice_not_editable" if invoice["status"] == "void" else None)
        self.sent_invoices.setdefault(invoice["id"], []).append(self._now())
        return self.render(invoice, expand)

    def void_invoice(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        expand = _expand(call.params, "invoice")
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        if invoice["status"] not in ("open", "uncollectible"):
            raise ApiError(400, f"You can only void open or uncollectible invoices; invoice "
                                f"{invoice['id']} is {invoice['status']} (delete drafts "
                                f"instead).", code="invoice_not_editable")
        invoice.update(status="void", amount_remaining=0)
        invoice["status_transitions"]["voided_at"] = self._now()
        return self.render(invoice, expand)

    def delete_invoice(self, call: _Call) -> Obj:
        """DELETE /v1/invoices/{id}: drafts only (finalized invoices are voided instead)."""
        _check_known(call.params, ())
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        if invoice["status"] != "draft":
            raise ApiError(400, f"You can only delete draft invoices; invoice {invoice['id']} is "
                                f"{invoice['status']} (void it instead).", code="invoice_not_editable")
        for item in list(self.invoice_items.values()):  # its invoice items go with it
            if item["invoice"] == invoice["id"]:
                del self.invoice_items[item["id"]]
        del self.invoices[invoice["id"]]
        return {"id": invoice["id"], "object": "invoice", "deleted": True}

    def pay_invoice(self, call: _Call) -> Obj:
        """POST /v1/invoices/{id}/pay, here only `paid_out_of_band=true` (a payment Stripe did not
        take: a bank transfer the finance team recorded)."""
        _check_known(call.params, ("paid_out_of_band", "expand"))
        if _boolean(call.params, "paid_out_of_band") is not True:
            raise ApiError(400, "This test server only records payments made out of band "
                                "(paid_out_of_band=true).", param="paid_out_of_band")
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        if invoice["status"] != "open":
            raise ApiError(400, f"Invoice {invoice['id']} is {invoice['status']}: only open invoices "
                                "can be paid.", code="invoice_not_editable")
        invoice.update(status="paid", paid_out_of_band=True, amount_paid=invoice["amount_remaining"],
                       amount_remaining=0)
        invoice["status_transitions"]["paid_at"] = self._now()
        return self.render(invoice, _expand(call.params, "invoice"))

    # credit notes

    def create_credit_note(self, call: _Call) -> Obj:
        """POST /v1/credit_notes by `amount` on a finalized invoice. On an open invoice it reduces
        what is due; on a paid one, the whole amount must go somewhere: the customer's balance
        (`credit_amount`) or outside Stripe (`out_of_band_amount`)."""
        p = call.params
        _check_known(p, ("invoice", "amount", "credit_amount", "refund_amount", "out_of_band_amount",
                         "reason", "memo", "metadata", "email_type", "expand"))
        invoice_id = _string(p, "invoice", required=True) or ""
        amount = _integer(p, "amount", minimum=1)
        credit = _integer(p, "credit_amount", minimum=0) or 0
        refund = _integer(p, "refund_amount", minimum=0) or 0
        out_of_band = _integer(p, "out_of_band_amount", minimum=0) or 0
        reason = _choice(p, "reason", ("duplicate", "fraudulent", "order_change", "product_unsatisfactory"))
        _choice(p, "email_type", ("credit_note", "none"))
        memo, metadata, expand = _string(p, "memo"), _metadata(p), _expand(p, "credit_note")
        if amount is None:
            raise _param_error("Missing required param: amount (or lines).", "amount", "parameter_missing")
        invoice = self._find(self.invoices, invoice_id, "invoice", "invoice")
        if invoice["status"] not in ("open", "paid"):
            raise ApiError(400, f"You can only create credit notes for open or paid invoices; invoice "
                                f"{invoice['id']} is {invoice['status']}.", param="invoice")
        credited = invoice["pre_payment_credit_notes_amount"] + invoice["post_payment_credit_notes_amount"]
        if amount > invoice["total"] - credited:
            raise ApiError(400, f"The credit note amount ({amount}) exceeds what remains to credit on the "
                                f"invoice ({invoice['total'] - credited}).", param="amount")
        _check_chargeable(amount, invoice["currency"])
        pre = min(amount, invoice["amount_remaining"]) if invoice["status"] == "open" else 0
        post = amount - pre
        if credit + refund + out_of_band != post:
            raise ApiError(400, f"The sum of credit_amount, refund_amount and out_of_band_amount "
                                f"({credit + refund + out_of_band}) must equal the post-payment amount of the "
                                f"credit note ({post}).", param="amount")
        if refund and invoice.get("paid_out_of_band"):
            raise ApiError(400, "This invoice was paid out of band: there is no charge to refund.",
                           param="refund_amount")
        customer = self.customers[invoice["customer"]]
        customer["balance"] -= credit
        invoice["pre_payment_credit_notes_amount"] += pre
        invoice["post_payment_credit_notes_amount"] += post
        invoice["amount_due"] -= pre
        invoice["amount_remaining"] -= pre
        note_id = self._new_id("cn")
        note: Obj = {
            "id": note_id, "object": "credit_note", "amount": amount, "created": self._now(),
            "currency": invoice["currency"], "customer": invoice["customer"], "invoice": invoice["id"],
            "memo": memo, "metadata": metadata, "reason": reason, "status": "issued",
            "number": f"{invoice['number']}-CN-{sum(1 for n in self.credit_notes.values() if n['invoice'] == invoice['id']) + 1:02d}",
            "pre_payment_amount": pre, "post_payment_amount": post, "out_of_band_amount": out_of_band or None,
            "type": "post_payment" if post else "pre_payment", "subtotal": amount, "total": amount,
            "livemode": False, "voided_at": None,
        }
        self.credit_notes[note_id] = note
        return self.render(note, expand)

    def list_credit_notes(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("invoice", "customer", *_LIST_PARAMS))
        invoice, customer = _string(p, "invoice"), _string(p, "customer")
        matches = [n for n in self.credit_notes.values()
                   if (invoice is None or n["invoice"] == invoice) and (customer is None or n["customer"] == customer)]
        return self.render(self._page(matches, p, "/v1/credit_notes", "credit_note"), _expand(p, "list:credit_note"))

    # invoice items

    def add_lines(self, call: _Call) -> Obj:
        """POST /v1/invoices/{id}/add_lines: every line or none, on a draft invoice only."""
        p = call.params
        _check_known(p, ("lines", "invoice_metadata", "expand"))
        invoice = self._find(self.invoices, call.path_id or "", "invoice", "id", 404)
        raw = p.get("lines")
        if not isinstance(raw, dict) or not raw:
            raise _param_error("Missing required param: lines.", "lines", "parameter_missing")
        if invoice["status"] != "draft":
            raise ApiError(400, "You can only add lines to a draft invoice.", code="invoice_not_editable")
        lines = []
        for index in sorted(raw, key=int):
            line = raw[index]
            if not isinstance(line, dict):
                raise _param_error(f"Invalid hash: lines[{index}]", f"lines[{index}]")
            _check_known(line, ("amount", "description", "metadata", "period", "discountable", "tax_rates",
                                "tax_amounts"))
            amount = _integer(line, "amount")
            if amount is None:
                raise _param_error(f"Missing required param: lines[{index}][amount].", f"lines[{index}][amount]",
                                   "parameter_missing")
            _check_chargeable(amount, invoice["currency"])
            rates = self._line_tax_rates(line.get("tax_rates"), f"lines[{index}][tax_rates]")
            amounts = _tax_amounts(line.get("tax_amounts"), f"lines[{index}][tax_amounts]", invoice["currency"])
            lines.append((amount, _string(line, "description"), _metadata(line), _period(line), rates, amounts))
        _check_room(invoice, len(lines))
        if any(amounts for *_, amounts in lines) and (
                any(rates for *_, rates, _ in lines) or any(l.get("tax_rates") for l in invoice["lines"]["data"])):
            raise _param_error("You cannot set tax amounts if any line item has tax_rates.", "lines")
        now = self._now()
        for amount, description, metadata, period, rates, amounts in lines:  # all validated: now add them all
            item: Obj = {
                "id": self._new_id("ii"), "object": "invoiceitem", "amount": amount,
                "currency": invoice["currency"], "customer": invoice["customer"], "date": now,
                "description": description, "discountable": True, "discounts": [], "invoice": None,
                "livemode": False, "metadata": metadata, "net_amount": amount, "parent": None,
                "period": period or {"start": now, "end": now},
                "pricing": {"price_details": None, "type": None, "unit_amount_decimal": _decimal_text(Decimal(amount))},
                "proration": False, "quantity": 1, "tax_rates": rates, "test_clock": None,
            }
            self.invoice_items[item["id"]] = item
            self._attach(invoice, item, [self._manual_tax(tax) for tax in amounts])
        invoice["metadata"].update(_metadata({"metadata": p.get("invoice_metadata")}))
        return self.render(invoice, _expand(p, "invoice"))

    def _manual_tax(self, tax: Obj) -> Obj:
        """A line's tax from its `tax_amounts` entry, on the TaxRate Stripe finds or creates for the
        `tax_rate_data`: the same one for exactly the same data, else a new one, archived."""
        key = json.dumps(tax["tax_rate_data"], sort_keys=True, default=str)
        rate_id = self._rates_by_data.get(key)
        if rate_id is None:
            rate_id = self._rates_by_data[key] = self._new_tax_rate(dict(tax["tax_rate_data"]), active=False,
                                                                     metadata={})["id"]
        return {"amount": tax["amount"], "tax_behavior": "exclusive", "tax_rate_details": {"tax_rate": rate_id},
                "taxability_reason": tax["taxability_reason"], "taxable_amount": tax["taxable_amount"],
                "type": "tax_rate_details"}

    def _line_tax_rates(self, raw: Any, param: str) -> list[Obj]:
        """The TaxRates of `tax_rates[]` (ids of active rates, at most 5), as copies for the item."""
        if raw is None or raw == "":
            return []
        if not isinstance(raw, dict) or not all(k.isdigit() for k in raw):
            raise _param_error(f"Invalid array: {param} must be an array of tax rate ids", param)
        ids = [raw[k] for k in sorted(raw, key=int)]
        if len(ids) > _MAX_TAX_RATES_PER_LINE:
            raise _param_error(f"A line can have at most {_MAX_TAX_RATES_PER_LINE} tax rates.", param)
        rates = []
        for rate_id in ids:
            rate = self.tax_rates.get(rate_id) if isinstance(rate_id, str) else None
            if rate is None:
                raise _no_such("tax_rate", str(rate_id), param)
            if not rate["active"]:
                raise ApiError(400, f"The tax rate {rate_id} is archived and cannot be applied.", param=param)
            rates.append(copy.deepcopy(rate))
        return rates

    def create_invoice_item(self, call: _Call) -> Obj:
        p = call.params
        allowed = ["customer", "invoice", "amount", "currency", "description", "metadata",
                   "quantity", "unit_amount_decimal", "period", "discountable", "expand"]
        _check_known(p, allowed + (["unit_amount"] if call.legacy_pricing else []))
        customer_id = _string(p, "customer", required=True) or ""
        invoice_id = _string(p, "invoice")
        amount, quantity = _integer(p, "amount"), _integer(p, "quantity", minimum=0)
        unit = self._unit_amount(call)
        currency, description = _currency(p), _string(p, "description")
        metadata, period, expand = _metadata(p), _period(p), _expand(p, "invoiceitem")
        discountable = _boolean(p, "discountable")
        self._check_pricing(amount, quantity, unit)
        customer = self._find(self.customers, customer_id, "customer", "customer")
        if invoice_id is not None:
            invoice = self._find(self.invoices, invoice_id, "invoice", "invoice")
            self._check_item_fits(invoice, customer_id, currency)
            currency = invoice["currency"]
        quantity = 1 if quantity is None else quantity
        if unit is not None:
            amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        else:
            unit = Decimal(amount or 0)
        _check_chargeable(amount or 0, currency or customer["currency"] or "usd")
        now = self._now()
        item: Obj = {
            "id": self._new_id("ii"), "object": "invoiceitem", "amount": amount,
            "currency": currency or customer["currency"] or "usd", "customer": customer_id,
            "date": now, "description": description,
            "discountable": True if discountable is None else discountable, "discounts": [],
            "invoice": None, "livemode": False, "metadata": metadata, "net_amount": amount,
            "parent": None,
            "period": period or {"start": now, "end": now},
            "pricing": {"price_details": None, "type": None,
                        "unit_amount_decimal": _decimal_text(unit)},
            "proration": False, "quantity": quantity, "tax_rates": [], "test_clock": None,
        }
        self.invoice_items[item["id"]] = item
        if invoice_id is not None:
            self._attach(self.invoices[invoice_id], item)
        return self.render(item, expand)

    @staticmethod
    def _unit_amount(call: _Call) -> Decimal | None:
        unit = _decimal(call.params, "unit_amount_decimal")
        legacy = _integer(call.params, "unit_amount") if call.legacy_pricing else None
        if unit is not None and legacy is not None:
            raise _param_error("You may only specify one of these parameters: unit_amount, "
                               "unit_amount_decimal.", "unit_amount")
        return unit if legacy is None else Decimal(legacy)

    @staticmethod
    def _check_pricing(amount: int | None, quantity: int | None, unit: Decimal | None) -> None:
        if amount is None and unit is None:
            raise _param_error("Missing required param: amount (or quantity and "
                               "unit_amount_decimal).", "amount", "parameter_missing")
        if amount is not None and unit is not None:
            raise _param_error("You may only specify one of these parameters: amount, "
                               "unit_amount_decimal.", "amount")
        if amount is not None and quantity not in (None, 1):
            raise _param_error("quantity can only be used with unit_amount_decimal; amount is "
                               "the whole item's amount.", "quantity")

    @staticmethod
    def _check_item_fits(invoice: Obj, customer_id: str, currency: str | None) -> None:
        if invoice["customer"] != customer_id:
            raise ApiError(400, f"The invoice {invoice['id']} belongs to customer "
                                f"{invoice['customer']}, not {customer_id}.", param="invoice")
        if invoice["status"] != "draft":
            raise ApiError(400, f"You can only add invoice items to draft invoices; invoice "
                                f"{invoice['id']} is {invoice['status']}.",
                           code="invoice_not_editable", param="invoice")
        if currency is not None and currency != invoice["currency"]:
            raise ApiError(400, f"The currency of the invoice item ({currency}) must match the "
                                f"currency of the invoice ({invoice['currency']}).",
                           param="currency")
        _check_room(invoice, 1)

    def retrieve_invoice_item(self, call: _Call) -> Obj:
        _check_known(call.params, ("expand",))
        item = self._find(self.invoice_items, call.path_id or "", "invoiceitem", "id", 404)
        return self.render(item, _expand(call.params, "invoiceitem"))

    def list_invoice_items(self, call: _Call) -> Obj:
        p = call.params
        _check_known(p, ("invoice", "customer", "pending", *_LIST_PARAMS))
        invoice, customer = _string(p, "invoice"), _string(p, "customer")
        pending = _boolean(p, "pending")
        matches = [i for i in self.invoice_items.values()
                   if (invoice is None or i["invoice"] == invoice)
                   and (customer is None or i["customer"] == customer)
                   and (pending is None or (i["invoice"] is None) == pending)]
        expand = _expand(p, "list:invoiceitem")
        return self.render(self._page(matches, p, "/v1/invoiceitems", "invoiceitem"), expand)


_MAX_INVOICE_ITEMS = 250  # Stripe's changelog 2016-02-22: "no more than 250 invoice items" on an invoice


def _check_room(invoice: Obj, adding: int) -> None:
    """Stripe refuses (400) items that would take an invoice over 250, before adding any."""
    if len(invoice["lines"]["data"]) + adding > _MAX_INVOICE_ITEMS:
        raise _param_error(f"An invoice can have at most {_MAX_INVOICE_ITEMS} invoice items; invoice "
                           f"{invoice['id']} has {len(invoice['lines']['data'])} and {adding} were added.", "lines")


_ID = r"(?P<id>[^/]+)"
_SEARCH_CLAUSE = re.compile(r"(?P<key>email|metadata\['[A-Za-z0-9_-]+'\]):(?P<value>'(?:[^'\\]|\\.)*')")
_ROUTES: list[tuple[str, re.Pattern[str], Callable[[_Account, _Call], Obj]]] = [
    (method, re.compile(pattern), handler) for method, pattern, handler in [
        ("POST", r"/v1/tax_rates", _Account.create_tax_rate),
        ("GET", r"/v1/tax_rates", _Account.list_tax_rates),
        ("GET", rf"/v1/tax_rates/{_ID}", _Account.retrieve_tax_rate),
        ("POST", r"/v1/customers", _Account.create_customer),
        ("GET", r"/v1/customers", _Account.list_customers),
        ("GET", r"/v1/customers/search", _Account.search_customers),
        ("GET", rf"/v1/customers/{_ID}", _Account.retrieve_customer),
        ("POST", rf"/v1/customers/{_ID}", _Account.update_customer),
        ("POST", r"/v1/invoices", _Account.create_invoice),
        ("GET", r"/v1/invoices", _Account.list_invoices),
        ("GET", rf"/v1/invoices/{_ID}", _Account.retrieve_invoice),
        ("GET", rf"/v1/invoices/{_ID}/lines", _Account.list_invoice_lines),
        ("POST", rf"/v1/invoices/{_ID}/finalize", _Account.finalize_invoice),
        ("POST", rf"/v1/invoices/{_ID}/send", _Account.send_invoice),
        ("POST", rf"/v1/invoices/{_ID}/void", _Account.void_invoice),
        ("DELETE", rf"/v1/invoices/{_ID}", _Account.delete_invoice),
        ("POST", rf"/v1/invoices/{_ID}/pay", _Account.pay_invoice),
        ("POST", r"/v1/credit_notes", _Account.create_credit_note),
        ("GET", r"/v1/credit_notes", _Account.list_credit_notes),
        ("POST", rf"/v1/invoices/{_ID}/add_lines", _Account.add_lines),
        ("POST", r"/v1/invoiceitems", _Account.create_invoice_item),
        ("GET", r"/v1/invoiceitems", _Account.list_invoice_items),
        ("GET", rf"/v1/invoiceitems/{_ID}", _Account.retrieve_invoice_item),
    ]
]


# --- requests, replies, faults ----------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the server answered (or dropped), for assertions."""

    method: str
    path: str
    params: Params
    idempotency_key: str | None
    stripe_version: str | None
    status: int
    request_id: str
    replayed: bool = False
    dropped: bool = False


@dataclass(frozen=True)
class _Incoming:
    method: str
    path: str
    query: str
    body: str
    headers: dict[str, str]  # lower-cased names

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key") if self.method == "POST" else None

    def params(self) -> Params:
        """Query string parameters, and for POST the form body's too (the body wins)."""
        parts = [self.query, self.body if self.method == "POST" else ""]
        return decode_form("&".join(part for part in parts if part))


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    drop: bool = False
    replayed: bool = False


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None: run the request, then drop the connection without answering
    method: str | None
    path_prefix: str | None
    should_retry: bool | None

    def matches(self, request: _Incoming) -> bool:
        return ((self.method is None or self.method.upper() == request.method)
                and (self.path_prefix is None or request.path.startswith(self.path_prefix)))

    def error(self) -> ApiError:
        assert self.status is not None
        headers = ({} if self.should_retry is None
                   else {"Stripe-Should-Retry": str(self.should_retry).lower()})
        if self.status == 429 and self.should_retry:
            return ApiError(429, "This object cannot be accessed right now because another API "
                                 "request or Stripe process is currently accessing it "
                                 "(injected lock timeout).", code="lock_timeout", saved=False,
                            headers=headers)
        if self.status == 429:
            return ApiError(429, "Request rate limit exceeded (injected).", code="rate_limit",
                            saved=False, headers=headers)
        if self.status >= 500:
            return ApiError(self.status, "An unknown error occurred (injected by the fake "
                                         "Stripe server).", type="api_error", saved=False,
                            headers=headers)
        return ApiError(self.status, f"Injected {self.status} error.", saved=False,
                        headers=headers)


@dataclass(frozen=True)
class _Saved:
    """An idempotent result: what was asked and what was answered."""

    method: str
    path: str
    params: Params
    status: int
    body: bytes
    request_id: str


def _dump(obj: Obj) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _api_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0] or None
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _masked(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 4) + key[-4:]


# --- the server -------------------------------------------------------------------------------


class FakeStripeServer:
    """The fake Stripe API on 127.0.0.1, on a free port, served by daemon threads.

    Use as a context manager or with start()/stop(). Attributes you may set at any time:
    `latency` (seconds slept before each answer), `rate_limit_per_second` (None = off).
    """

    def __init__(self, *, api_keys: Iterable[str] | None = None, latency: float = 0.0,
                 rate_limit_per_second: int | None = None,
                 clock: Callable[[], float] = time.time,
                 default_api_version: str = DEFAULT_API_VERSION) -> None:
        """`api_keys`: the keys accepted (default: any `sk_test_…`/`rk_test_…` key).
        `clock`: Unix time for `created` and other timestamps."""
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self._initial = (latency, rate_limit_per_second)
        self._clock = clock
        self.default_api_version = default_api_version
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    def _clear(self) -> None:
        self.latency, self.rate_limit_per_second = self._initial
        self.rejected_429 = 0
        self._account = _Account(self._clock)
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._saved: dict[str, _Saved] = {}
        self._window: deque[float] = deque()
        self._request_count = 0

    # lifecycle

    def start(self) -> FakeStripeServer:
        if self._httpd is not None:
            raise RuntimeError("FakeStripeServer is already running")
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-stripe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections (clients then see them closed)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeStripeServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeStripeServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, for `StripeClient(base_addresses={"api": ...})`."""
        return f"http://127.0.0.1:{self.port}"

    # fault injection

    def fail_next(self, count: int = 1, status: int = 500, *, method: str | None = None,
                  path_prefix: str | None = None, should_retry: bool | None = None) -> None:
        """Answer the next `count` matching requests with `status` and a Stripe error body,
        changing nothing (5xx: `api_error`; 429: `rate_limit`, or `lock_timeout` when
        `should_retry`). `should_retry` sets the `Stripe-Should-Retry` header (default: none)."""
        if count < 1 or not 400 <= status <= 599:
            raise ValueError("count must be >= 1 and status a 4xx or 5xx code")
        with self._lock:
            self._faults.append(_Fault(count, status, method, path_prefix, should_retry))

    def drop_next(self, count: int = 1, *, method: str | None = None,
                  path_prefix: str | None = None) -> None:
        """Run the next `count` matching requests (state changes, idempotent results saved) but
        close the connection instead of answering: a response lost on the network."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_Fault(count, None, method, path_prefix, None))

    def clear_faults(self) -> None:
        """Cancel the faults still pending from fail_next()/drop_next() (the outage is over)."""
        with self._lock:
            self._faults.clear()

    def forget_idempotency_keys(self) -> None:
        """Drop every saved idempotent result, as Stripe does after 24 hours."""
        with self._lock:
            self._saved.clear()

    def reset(self) -> None:
        """Back to a fresh account: no objects, requests, faults, keys; initial settings."""
        with self._lock:
            self._clear()

    # inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, method: str | None = None,
                     path_prefix: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests
                if (method is None or r.method == method.upper())
                and (path_prefix is None or r.path.startswith(path_prefix))]

    @property
    def customers(self) -> dict[str, Obj]:
        with self._lock:
            return copy.deepcopy(self._account.customers)

    @property
    def invoices(self) -> dict[str, Obj]:
        """Invoices with all their lines (the API embeds only the first 10)."""
        with self._lock:
            return copy.deepcopy(self._account.invoices)

    def edit_invoice(self, invoice_id: str, **fields: object) -> None:
        """Change an invoice behind the API's back, as a dashboard edit or a bug at Stripe would
        (for tests that must notice it)."""
        with self._lock:
            self._account.invoices[invoice_id].update(fields)

    @property
    def tax_rates(self) -> dict[str, Obj]:
        with self._lock:
            return copy.deepcopy(self._account.tax_rates)

    @property
    def tax_rounding(self) -> str:
        """"line_item" (Stripe's default) or "invoice" (the account's setting to round tax per invoice)."""
        return self._account.tax_rounding

    @tax_rounding.setter
    def tax_rounding(self, value: str) -> None:
        if value not in ("line_item", "invoice"):
            raise ValueError("tax_rounding is 'line_item' or 'invoice'")
        with self._lock:
            self._account.tax_rounding = value
            for invoice in self._account.invoices.values():  # drafts are computed again; finalized ones stay
                if invoice["status"] == "draft":
                    self._account._recompute(invoice)

    @property
    def invoice_items(self) -> dict[str, Obj]:
        with self._lock:
            return copy.deepcopy(self._account.invoice_items)

    @property
    def credit_notes(self) -> dict[str, Obj]:
        with self._lock:
            return copy.deepcopy(self._account.credit_notes)

    @property
    def sent_invoices(self) -> dict[str, list[int]]:
        """Invoice id -> the times `POST /v1/invoices/{id}/send` succeeded."""
        with self._lock:
            return copy.deepcopy(self._account.sent_invoices)

    def snapshot(self) -> Obj:
        with self._lock:
            return {"customers": self.customers, "invoices": self.invoices,
                    "invoice_items": self.invoice_items, "sent_invoices": self.sent_invoices}

    # serving (called from the HTTP handler threads)

    def _serve(self, request: _Incoming) -> _Reply:
        if self.latency > 0:
            time.sleep(self.latency)
        with self._lock:
            self._request_count += 1
            request_id = f"req_{self._request_count:06d}"
            try:
                params: Params = request.params()
                parse_error: ApiError | None = None
            except ApiError as err:
                params, parse_error = {}, err
            reply = self._answer(request, params, parse_error, request_id)
            self._requests.append(RecordedRequest(
                request.method, request.path, params, request.idempotency_key,
                request.headers.get("stripe-version"), reply.status, request_id,
                replayed=reply.replayed, dropped=reply.drop))
            return reply

    def _answer(self, request: _Incoming, params: Params, parse_error: ApiError | None,
                request_id: str) -> _Reply:
        headers = {"Request-Id": request_id,
                   "Stripe-Version": request.headers.get("stripe-version")
                   or self.default_api_version}
        key = request.idempotency_key
        if key is not None:
            headers["Idempotency-Key"] = key
        fault: _Fault | None = None
        try:
            self._admit()
            fault = self._take_fault(request)
            if fault is not None and fault.status is not None:
                raise fault.error()
            self._authenticate(request)
            if key is not None and len(key) > 255:
                raise _param_error("Idempotency keys can be at most 255 characters long.",
                                   code="idempotency_key_too_long")
            if parse_error is not None:
                raise parse_error
            reply = self._run_idempotently(request, params, key, headers)
        except ApiError as err:
            reply = _Reply(err.status, _dump(err.body()), {**headers, **err.headers})
        reply.drop = fault is not None and fault.status is None
        return reply

    def _admit(self) -> None:
        limit = self.rate_limit_per_second
        if limit is None:
            return
        now = time.monotonic()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if len(self._window) >= limit:
            self.rejected_429 += 1
            raise ApiError(429, "Request rate limit exceeded. Learn more about rate limits "
                                "here https://stripe.com/docs/rate-limits.", code="rate_limit",
                           saved=False)
        self._window.append(now)

    def _take_fault(self, request: _Incoming) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(request):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _authenticate(self, request: _Incoming) -> None:
        key = _api_key(request.headers.get("authorization"))
        if key is None:
            raise ApiError(401, "You did not provide an API key. You need to provide your API "
                                "key in the Authorization header, using Bearer auth (e.g. "
                                "'Authorization: Bearer YOUR_SECRET_KEY').", saved=False)
        accepted = (key in self._api_keys if self._api_keys is not None
                    else key.startswith(("sk_test_", "rk_test_")))
        if not accepted:
            raise ApiError(401, f"Invalid API Key provided: {_masked(key)}", saved=False)

    def _run_idempotently(self, request: _Incoming, params: Params, key: str | None,
                          headers: dict[str, str]) -> _Reply:
        saved = self._saved.get(key) if key is not None else None
        if saved is not None:
            self._check_same_request(saved, request, params, key or "")
            return _Reply(saved.status, saved.body,
                          {**headers, "Idempotent-Replayed": "true",
                           "Original-Request": saved.request_id}, replayed=True)
        status, body, keep = self._execute(request, params)
        if key is not None and keep:
            self._saved[key] = _Saved(request.method, request.path, params, status, body,
                                      headers["Request-Id"])
        return _Reply(status, body, headers)

    @staticmethod
    def _check_same_request(saved: _Saved, request: _Incoming, params: Params,
                            key: str) -> None:
        if (saved.method, saved.path) != (request.method, request.path):
            raise ApiError(400, f"Keys for idempotent requests can only be used for the same "
                                f"endpoint they were first used for ('{saved.method} "
                                f"{saved.path}' vs '{request.method} {request.path}'). Try "
                                f"using a key other than '{key}' if you meant to execute a "
                                f"different request.", type="idempotency_error", saved=False)
        if saved.params != params:
            raise ApiError(400, f"Keys for idempotent requests can only be used with the same "
                                f"parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request.",
                           type="idempotency_error", saved=False)

    def _execute(self, request: _Incoming, params: Params) -> tuple[int, bytes, bool]:
        """Route and run; returns (status, body, whether an idempotency key keeps it)."""
        try:
            handler, path_id = self._route(request)
            version = request.headers.get("stripe-version") or self.default_api_version
            return 200, _dump(handler(self._account, _Call(params, path_id, version))), True
        except ApiError as err:
            return err.status, _dump(err.body()), err.saved

    @staticmethod
    def _route(request: _Incoming) -> tuple[Callable[[_Account, _Call], Obj], str | None]:
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                path_id = match.groupdict().get("id")
                return handler, unquote(path_id) if path_id is not None else None
        raise ApiError(404, f"Unrecognized request URL ({request.method}: {request.path}). "
                            f"Please see https://stripe.com/docs or we can help at "
                            f"https://support.stripe.com/.", saved=False)


# --- HTTP plumbing ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = _Incoming(self.command, url.path, url.query, body.decode("utf-8", "replace"),
                            {name.lower(): value for name, value in self.headers.items()})
        reply = self.server.fake._serve(request)
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Quiet: tests assert on `FakeStripeServer.requests` instead."""


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that remembers open connections, to cut them on stop()."""

    daemon_threads = True

    def __init__(self, fake: FakeStripeServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

