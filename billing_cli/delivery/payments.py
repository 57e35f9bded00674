"""Stripe, through the official SDK: customers, draft invoices, invoice items, finalize, send.

Every creating call carries an idempotency key derived from our own ids, so a retry never
duplicates. Stripe forgets keys after about 24 hours; what makes a rerun days later safe is
the ids we store (and the lookups below by our metadata). The client is built on first use.
"""

from __future__ import annotations

import threading
import time as _time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Protocol

from .breaker import CircuitBreaker, CircuitOpen
from .retries import retrying

# Pinned, so that upgrading the SDK never silently changes the API behaviour we rely on.
STRIPE_API_VERSION = "2026-10-28.endive"

# Stripe refuses more items on one invoice (changelog 2016-02-22, "no more than 250 invoice items").
STRIPE_MAX_LINES = 250


class PaymentError(Exception):
    def __init__(self, message: str, *, transient: bool, not_found: bool = False, conflict: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.not_found = not_found  # Stripe answered 404: no such object
        self.conflict = conflict  # an idempotency key reused with other parameters (400 idempotency_error)


@dataclass(frozen=True)
class StripeCustomer:
    id: str
    name: str | None
    email: str | None


@dataclass(frozen=True)
class StripeInvoice:
    id: str
    status: str  # draft | open | paid | void | uncollectible
    total: int  # minor units
    currency: str
    hosted_url: str | None = None


@dataclass(frozen=True)
class StripeInvoiceDetail:
    """A Stripe invoice as `billing reconcile` compares it with ours."""

    id: str
    status: str
    total: int  # minor units
    currency: str
    our_number: str | None  # the invoice number we gave it (metadata)
    lines: tuple[tuple[int, int], ...]  # (our line number, amount in minor units), in our order
    hosted_url: str | None = None  # Stripe's page for the customer, once finalized
    credited: int = 0  # what credit notes already took off it, in minor units


@dataclass(frozen=True)
class StripeLine:
    """One line of our invoice as Stripe gets it."""

    line_no: int
    amount: int  # in Stripe's units for the currency (money.to_stripe_amount)
    description: str
    taxes: tuple[StripeLineTax, ...] = ()  # our tax of each charged rate on this line (taxes on)
    period: tuple[int, int] | None = None  # the period the line bills, as Unix times [start, end)


@dataclass(frozen=True)
class StripeLineTax:
    """One line's share of our tax of one rate, as Stripe takes taxes calculated outside it (a line's
    `tax_amounts`): Stripe adds `amount` as it is, and computes nothing."""

    amount: int  # in Stripe's units, like the line's
    taxable_amount: int  # the line's amount
    display_name: str  # VAT, GST, sales tax
    percentage: str  # exact decimal text
    country: str
    region: str | None
    description: str  # which of our rate versions it is (for us: Stripe shows it to no customer)


class PaymentGateway(Protocol):
    def find_customer(self, organization_id: str) -> StripeCustomer | None: ...
    def create_customer(self, organization_id: str, name: str, email: str) -> str: ...
    def update_customer(self, customer_id: str, *, name: str, email: str, since: str) -> None: ...
    def find_invoice(self, customer_id: str, invoice_id: int) -> StripeInvoice | None: ...
    def create_draft(self, customer_id: str, *, invoice_id: int, number: str, currency: str,
                     due_date: date, footer: str | None = None) -> StripeInvoice: ...
    def add_lines(self, stripe_invoice_id: str, *, invoice_id: int, lines: list[StripeLine]) -> StripeInvoice: ...
    def send(self, stripe_invoice_id: str, *, invoice_id: int) -> StripeInvoice: ...
    def invoice_detail(self, stripe_invoice_id: str) -> StripeInvoiceDetail | None: ...
    def delete_draft(self, stripe_invoice_id: str) -> None: ...
    def void(self, stripe_invoice_id: str, *, invoice_id: int) -> None: ...
    def credit_notes(self, stripe_invoice_id: str, *, invoice_id: int) -> list[str]: ...
    def credit_in_full(self, stripe_invoice_id: str, *, invoice_id: int, amount: int, memo: str) -> str: ...


# Stripe's TaxRate.tax_type for the usual names of our rates (others are left without a type).
_TAX_TYPES = {"vat": "vat", "gst": "gst", "hst": "hst", "pst": "pst", "qst": "qst", "rst": "rst", "igst": "igst",
              "jct": "jct", "sales tax": "sales_tax", "service tax": "service_tax"}


def _retryable(exc: BaseException) -> bool:
    """What Stripe (and its SDK) say is worth retrying: no connection, 5xx, 409 conflicts, 429."""
    import stripe

    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    status = getattr(exc, "http_status", None)
    return isinstance(exc, stripe.StripeError) and status is not None and (status >= 500 or status == 409)


def _path(stripe_id: str) -> str:
    """An id inside a URL path, escaped as the SDK's own services do."""
    from urllib.parse import quote

    return quote(stripe_id, safe="")


def _tax_amount(tax: StripeLineTax) -> dict[str, Any]:
    """One `tax_amounts` entry: the amount and what Stripe prints beside it (an exclusive rate)."""
    tax_type = _TAX_TYPES.get(tax.display_name.strip().lower())
    return {"amount": tax.amount, "taxable_amount": tax.taxable_amount,
            **({"taxability_reason": "standard_rated"} if Decimal(tax.percentage) else {}),
            "tax_rate_data": {
                "display_name": tax.display_name[:50], "percentage": tax.percentage, "inclusive": False,
                "country": tax.country, **({"state": tax.region} if tax.region else {}),
                "jurisdiction": f"{tax.country}-{tax.region}" if tax.region else tax.country,
                "jurisdiction_level": "state" if tax.region else "country",
                "description": tax.description[:500], **({"tax_type": tax_type} if tax_type else {})}}


def _key(prefix: str, identifier: str) -> str:
    """An idempotency key (Stripe allows 255 characters; long ids are hashed)."""
    if len(identifier) > 180:
        import hashlib

        identifier = hashlib.sha256(identifier.encode()).hexdigest()
    return f"{prefix}-{identifier}"


class RateLimiter:
    """At most `per_second` calls that can have reached the server in any one-second window, shared
    by all worker threads: the way Stripe (and a server's own window) counts, by arrival.

    We never know when a call arrives, only that it was after we sent it and before its answer
    came back. So a call holds its place from the moment it starts until WINDOW after its answer
    (or its failure): a new call starts only while fewer than `per_second` calls are in flight or
    were answered within the last WINDOW. Then no one-second window at the server can hold more than
    `per_second` arrivals, whatever the delays on the way (any call arriving in the window of the
    last one to start in it was, when that one started, in flight or answered less than a second
    before). Counting from the start times instead (the previous version, with a 1.05 s window as
    the margin) let network and scheduling delays of more than 50 ms put 101 calls in one second:
    measured, a few 429s per run at 100/s on a loaded machine. The price is each call's own
    duration: a place is reused every WINDOW + duration, so the sustained rate is about
    per_second / (1 + the call's duration in seconds).

    Calls are not spaced evenly: a burst up to the limit goes at once, since spacing them
    1/per_second apart queues concurrent workers behind each other even well below the limit
    (measured: 15% of a busy run's wall time at 80% of the limit)."""

    WINDOW = 1.0  # seconds

    def __init__(self, per_second: int, *, clock: Callable[[], float] = _time.monotonic,
                 sleep: Callable[[float], None] = _time.sleep) -> None:
        self.limit = per_second
        self._clock, self._sleep = clock, sleep
        self._answered: deque[float] = deque()  # when the calls of the last WINDOW ended, in order
        self._in_flight = 0
        self._changed = threading.Condition(threading.Lock())

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a place for one call, from before it is sent until it has ended (however)."""
        if self.limit <= 0:
            yield
            return
        self._enter()
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._answered.append(self._clock())
                self._changed.notify_all()  # a waiter now knows when the next place frees

    def _enter(self) -> None:
        while True:
            with self._changed:
                now = self._clock()
                while self._answered and self._answered[0] <= now - self.WINDOW:
                    self._answered.popleft()
                if self._in_flight + len(self._answered) < self.limit:
                    self._in_flight += 1
                    return
                if not self._answered:  # every place is a call in flight: wait for one to end
                    self._changed.wait(self.WINDOW)
                    continue
                wait = self._answered[0] + self.WINDOW - now
            self._sleep(wait)


class StripeGateway:
    """The real adapter. `api_base` points the SDK at another Stripe-compatible server (staging,
    tests); the code path is the same."""

    def __init__(self, api_key: str, *, api_base: str | None = None, requests_per_second: int = 25,
                 max_attempts: int = 4, max_retry_seconds: float = 60, timeout_seconds: float = 30,
                 max_connections: int = 10, breaker_failures: int = 5,
                 stopping: threading.Event | None = None) -> None:
        self._api_key = api_key
        self._stopping = stopping  # the run's SIGTERM: no new attempt once set (retries.py)
        self._api_base = api_base
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._timeout = timeout_seconds
        self._max_connections = max_connections
        self.limiter = RateLimiter(requests_per_second)
        self.breaker = CircuitBreaker("Stripe", failures=breaker_failures,
                                      is_transient=lambda exc: isinstance(exc, PaymentError) and exc.transient)
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._retrying: Any = None

    def __repr__(self) -> str:
        return f"StripeGateway(api_base={self._api_base!r})"  # never the key

    # -- plumbing ----------------------------------------------------------------------------
    def _stripe(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import stripe

                from .stripe_http import Urllib3Client

                self._client = stripe.StripeClient(
                    self._api_key, stripe_version=STRIPE_API_VERSION,
                    base_addresses={"api": self._api_base} if self._api_base else None,
                    max_network_retries=0,  # retried below, within DELIVERY_MAX_RETRY_SECONDS
                    http_client=Urllib3Client(timeout_seconds=self._timeout, max_connections=self._max_connections))
                # Every transient failure (connection, 5xx, 409, 429) backs off and retries, at most
                # DELIVERY_MAX_ATTEMPTS times and DELIVERY_MAX_RETRY_SECONDS in all: one call never
                # holds a run for minutes. Safe: every creating call carries an idempotency key.
                self._retrying = retrying(_retryable, attempts=self._max_attempts, seconds=self._max_retry_seconds,
                                          multiplier=0.5, longest=8, stopping=self._stopping)
            return self._client

    def _request(self, what: str, method: str, path: str, **params: Any) -> dict[str, Any]:
        """One API call, answered as the plain JSON object. Through the SDK's `raw_request`: its
        auth, pinned API version, idempotency keys, retries and error types, without building
        StripeObjects (this adapter reads a few fields; building them was a quarter of a call's CPU).

        Around it: the client-side rate limit, the retries with backoff, and the run's circuit
        breaker (after DELIVERY_CIRCUIT_BREAKER_FAILURES transient failures in a row, Stripe is not
        called again in this run)."""
        try:
            return self.breaker.call(lambda: self._retried(what, method, path, params))
        except CircuitOpen as exc:
            raise PaymentError(f"Stripe {what}: {exc}", transient=True) from None

    def _retried(self, what: str, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        import stripe

        client = self._stripe()

        def attempt() -> dict[str, Any]:
            with self.limiter.slot():
                return client.raw_request(method, path, **params).data

        try:
            return self._retrying(attempt)
        except stripe.RateLimitError as exc:
            raise PaymentError(f"Stripe {what}: rate limited (429) after {self._max_attempts} attempts",
                               transient=True) from exc
        except stripe.AuthenticationError:
            raise PaymentError(f"Stripe {what}: authentication failed: check STRIPE_API_KEY", transient=False) from None
        except stripe.InvalidRequestError as exc:
            raise PaymentError(f"Stripe {what}: {exc.user_message or exc}", transient=False,
                               not_found=getattr(exc, "http_status", None) == 404) from None
        except stripe.IdempotencyError as exc:
            raise PaymentError(f"Stripe {what}: idempotency conflict: {exc.user_message or exc}",
                               transient=False, conflict=True) from None
        except stripe.APIConnectionError as exc:
            raise PaymentError(f"Stripe {what}: cannot reach Stripe ({type(exc).__name__})", transient=True) from None
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None)
            raise PaymentError(f"Stripe {what}: {status or ''} {exc.user_message or type(exc).__name__}".strip(),
                               transient=status is None or status >= 500) from None

    def _list(self, what: str, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every object of a list, following `has_more` page by page."""
        objects: list[dict[str, Any]] = []
        while True:
            page = self._request(what, "get", path, limit=100, **params)
            objects += page["data"]
            if not page.get("has_more") or not page["data"]:
                return objects
            params["starting_after"] = page["data"][-1]["id"]

    @staticmethod
    def _invoice(data: dict[str, Any]) -> StripeInvoice:
        return StripeInvoice(data["id"], data["status"], int(data.get("total") or 0), data["currency"],
                             hosted_url=data.get("hosted_invoice_url"))

    # -- customers ---------------------------------------------------------------------------
    def find_customer(self, organization_id: str) -> StripeCustomer | None:
        """The customer made for the organization (by our metadata, whatever its name and e-mail
        have become), through Stripe's Search API: it lags writes by about a minute, which a rerun
        after a crash leaves it."""
        quoted = organization_id.replace("\\", "\\\\").replace("'", "\\'")
        params: dict[str, Any] = {"query": f"metadata['organization_id']:'{quoted}'", "limit": 100}
        while True:
            page = self._request("customer lookup", "get", "/v1/customers/search", **params)
            for customer in page["data"]:
                if (customer.get("metadata") or {}).get("organization_id") == organization_id:
                    return StripeCustomer(customer["id"], customer.get("name"), customer.get("email"))
            if not page.get("has_more") or not page.get("next_page"):
                return None
            params["page"] = page["next_page"]

    def create_customer(self, organization_id: str, name: str, email: str) -> str:
        return self._request("customer creation", "post", "/v1/customers", name=name, email=email,
                             metadata={"organization_id": organization_id},
                             idempotency_key=_key("billing-customer", organization_id))["id"]

    # -- invoices ----------------------------------------------------------------------------
    def find_invoice(self, customer_id: str, invoice_id: int) -> StripeInvoice | None:
        for invoice in self._list("invoice lookup", "/v1/invoices", customer=customer_id):
            if (invoice.get("metadata") or {}).get("billing_invoice_id") == str(invoice_id) \
                    and invoice["status"] != "void":
                return self._invoice(invoice)
        return None

    def update_customer(self, customer_id: str, *, name: str, email: str, since: str) -> None:
        """The customer's name and e-mail as the organization's are now (they changed since).
        `since`: which recorded state of the customer this update changes (when billing last
        recorded it), so that each change gets a key of its own: a change back to details the
        customer had earlier in the day is applied, not replayed from the first time."""
        import hashlib

        fingerprint = hashlib.sha256(f"{since}\n{name}\n{email}".encode()).hexdigest()[:16]
        self._request("customer update", "post", f"/v1/customers/{_path(customer_id)}", name=name, email=email,
                      idempotency_key=_key("billing-customer-update", f"{customer_id}-{fingerprint}"))

    def create_draft(self, customer_id: str, *, invoice_id: int, number: str, currency: str,
                     due_date: date, footer: str | None = None) -> StripeInvoice:
        """A draft with our number and our due date (end of that day, UTC), not Stripe's own: the
        same invoice, under the same number, whatever day the draft is made. `footer`: the legal
        mentions of its taxes (a reverse charge, an exemption), printed by Stripe too."""
        due = int(datetime.combine(due_date, time(23, 59, 59), tzinfo=UTC).timestamp())
        return self._invoice(self._request(
            "draft invoice", "post", "/v1/invoices",
            customer=customer_id, collection_method="send_invoice", due_date=due, number=number,
            auto_advance=False, currency=currency.lower(), pending_invoice_items_behavior="exclude",
            description=f"Invoice {number}", metadata={"invoice_number": number, "billing_invoice_id": str(invoice_id)},
            **({"footer": footer[:5000]} if footer else {}),
            idempotency_key=f"billing-invoice-{invoice_id}-draft"))

    def add_lines(self, stripe_invoice_id: str, *, invoice_id: int, lines: list[StripeLine]) -> StripeInvoice:
        """Every line in one call: Stripe adds all of them or none, to a draft only. Answers the
        invoice with its new total. A line's taxes go as its `tax_amounts` ("taxes you calculate
        yourself"): Stripe adds them as they are, and finds or creates an archived TaxRate for each
        distinct `tax_rate_data` by itself, so a rate costs no call of its own."""
        first, last = lines[0].line_no, lines[-1].line_no
        return self._invoice(self._request(
            "invoice lines", "post", f"/v1/invoices/{_path(stripe_invoice_id)}/add_lines",
            lines=[{"amount": line.amount, "description": line.description[:500],
                    "metadata": {"billing_invoice_id": str(invoice_id), "line_no": str(line.line_no)},
                    **({"tax_amounts": [_tax_amount(tax) for tax in line.taxes]} if line.taxes else {}),
                    **({"period": {"start": line.period[0], "end": line.period[1]}} if line.period else {})}
                   for line in lines],
            idempotency_key=f"billing-invoice-{invoice_id}-lines-{first}-{last}"))

    def send(self, stripe_invoice_id: str, *, invoice_id: int) -> StripeInvoice:
        """Send the invoice to the customer; a draft is finalized first (one call, and Stripe's
        status then tells whether it was sent: only this call finalizes our drafts)."""
        return self._invoice(self._request(
            "sending", "post", f"/v1/invoices/{_path(stripe_invoice_id)}/send",
            idempotency_key=f"billing-invoice-{invoice_id}-send"))

    # -- reversing the invoice of a voided one ---------------------------------------------------
    def delete_draft(self, stripe_invoice_id: str) -> None:
        """Delete a draft (never sent, never charged); done already if Stripe has no such invoice."""
        try:
            self._request("draft deletion", "delete", f"/v1/invoices/{_path(stripe_invoice_id)}")
        except PaymentError as exc:
            if not exc.not_found:
                raise

    def void(self, stripe_invoice_id: str, *, invoice_id: int) -> None:
        """Void an open (or uncollectible) invoice: the customer no longer owes it."""
        self._request("voiding", "post", f"/v1/invoices/{_path(stripe_invoice_id)}/void",
                      idempotency_key=f"billing-invoice-{invoice_id}-void")

    def credit_notes(self, stripe_invoice_id: str, *, invoice_id: int) -> list[str]:
        """The ids of the credit notes this program issued for the invoice."""
        return [note["id"] for note in self._list("credit note lookup", "/v1/credit_notes", invoice=stripe_invoice_id)
                if (note.get("metadata") or {}).get("billing_invoice_id") == str(invoice_id)]

    def credit_in_full(self, stripe_invoice_id: str, *, invoice_id: int, amount: int, memo: str) -> str:
        """A credit note for `amount` on a paid invoice, credited to the customer's balance (which
        Stripe applies to the customer's next invoice). Returns its id."""
        return self._request(
            "credit note", "post", "/v1/credit_notes", invoice=stripe_invoice_id, amount=amount, credit_amount=amount,
            reason="order_change", memo=memo[:500], metadata={"billing_invoice_id": str(invoice_id)},
            idempotency_key=f"billing-invoice-{invoice_id}-credit-note")["id"]

    def invoice_detail(self, stripe_invoice_id: str) -> StripeInvoiceDetail | None:
        """The invoice with all its lines, read-only; None if Stripe has no such invoice."""
        try:
            data = self._request("invoice retrieval", "get", f"/v1/invoices/{_path(stripe_invoice_id)}")
        except PaymentError as exc:
            if exc.not_found:
                return None
            raise
        lines = data.get("lines") or {}
        items = lines.get("data", []) if not lines.get("has_more") else \
            self._list("invoice lines", f"/v1/invoices/{_path(stripe_invoice_id)}/lines")
        numbered = sorted((int((line.get("metadata") or {}).get("line_no", 0)), int(line["amount"])) for line in items)
        return StripeInvoiceDetail(data["id"], data["status"], int(data.get("total") or 0), data["currency"],
                                   (data.get("metadata") or {}).get("invoice_number"), tuple(numbered),
                                   data.get("hosted_invoice_url"),
                                   int(data.get("pre_payment_credit_notes_amount") or 0)
                                   + int(data.get("post_payment_credit_notes_amount") or 0))
