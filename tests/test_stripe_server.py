"""The fake Stripe server (tests/peers/stripe_server.py), driven by the real `stripe` SDK over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import stripe

from tests.peers.stripe_server import FakeStripeServer

KEY = "sk_test_billing_fake_0001"
API_VERSION = "2025-03-31.basil"


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK sleeps >= 0.5 s before a retry; 10 ms keeps the retry tests fast."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)


def client_for(fake: FakeStripeServer, *, retries: int = 0, key: str = KEY) -> stripe.StripeClient:
    """Configured the way production configures it, only pointed at the fake."""
    return stripe.StripeClient(key, base_addresses={"api": fake.base_url},
                               stripe_version=API_VERSION, max_network_retries=retries)


def new_customer(client: stripe.StripeClient, email: str = "billing@acme.test") -> stripe.Customer:
    return client.v1.customers.create({"email": email, "name": "Acme", "metadata": {"org_id": "7"}})


def draft_invoice(client: stripe.StripeClient, customer_id: str, number: str = "INV-1",
                  **extra: object) -> stripe.Invoice:
    params = {"customer": customer_id, "collection_method": "send_invoice", "days_until_due": 30,
              "auto_advance": False, "pending_invoice_items_behavior": "exclude",
              "description": "Usage, January", "metadata": {"invoice_number": number}, **extra}
    return client.v1.invoices.create(params, options={"idempotency_key": f"invoice-{number}"})


def raw(fake: FakeStripeServer, method: str, path: str, body: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
    """An HTTP request without the SDK: (status, headers, JSON body)."""
    request = urllib.request.Request(fake.base_url + path, method=method,
                                     data=body.encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


# --- the happy path ---------------------------------------------------------------------------


def test_invoice_lifecycle(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    assert customer.id.startswith("cus_") and customer.object == "customer"
    assert customer.livemode is False and customer.metadata.to_dict() == {"org_id": "7"}

    invoice = draft_invoice(client, customer.id)
    assert (invoice.status, invoice.number, invoice.total, invoice.amount_due) == ("draft", None, 0, 0)
    assert invoice.currency == "usd" and invoice.customer == customer.id
    assert invoice.metadata.to_dict() == {"invoice_number": "INV-1"}
    assert invoice.due_date == invoice.created + 30 * 86400

    first = client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "amount": 12_345, "currency": "usd",
         "description": "API calls", "metadata": {"line": "1"}},
        options={"idempotency_key": "INV-1-line-1"})
    second = client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "quantity": 3,
         "unit_amount_decimal": "250.5", "description": "Seats"},
        options={"idempotency_key": "INV-1-line-2"})
    assert (first.object, first.amount, first.invoice) == ("invoiceitem", 12_345, invoice.id)
    assert second.amount == 752  # 3 x 250.5 = 751.5, rounded half-up

    invoice = client.v1.invoices.retrieve(invoice.id)
    assert (invoice.subtotal, invoice.total, invoice.amount_due) == (13_097, 13_097, 13_097)
    assert [line.amount for line in invoice.lines.data] == [12_345, 752]
    assert invoice.lines.data[0].parent.invoice_item_details.invoice_item == first.id

    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    assert finalized.number == f"{customer.invoice_prefix}-0001"
    assert finalized.status_transitions.finalized_at is not None

    sent = client.v1.invoices.send_invoice(invoice.id)
    assert sent.id == invoice.id and sent.status == "open"
    assert len(fake.sent_invoices[invoice.id]) == 1

    listed = client.v1.invoices.list({"customer": customer.id, "status": "open"})
    assert [i.id for i in listed.data] == [invoice.id] and listed.has_more is False
    assert client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data == []

    items = client.v1.invoice_items.list({"invoice": invoice.id})
    assert {i.id for i in items.data} == {first.id, second.id}
    assert fake.invoices[invoice.id]["total"] == 13_097


def test_wire_format_is_recorded(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    draft_invoice(client, customer.id)

    create = fake.requests_for("POST", "/v1/invoices")[0]
    assert create.params["metadata"] == {"invoice_number": "INV-1"}  # metadata[invoice_number]=…
    assert create.params["days_until_due"] == "30" and create.params["auto_advance"] == "false"
    assert create.idempotency_key == "invoice-INV-1"
    assert create.stripe_version == API_VERSION
    assert customer.last_response is not None
    assert customer.last_response.request_id == fake.requests[0].request_id


def test_raw_http_form_encoding_headers_and_errors(fake: FakeStripeServer) -> None:
    status, headers, body = raw(fake, "POST", "/v1/customers",
                                "email=a%40b.test&metadata[plan]=pro&metadata[empty]=",
                                {"Idempotency-Key": "raw-1"})
    assert status == 200 and body["metadata"] == {"plan": "pro"}
    assert headers["Request-Id"].startswith("req_") and headers["Idempotency-Key"] == "raw-1"

    status, headers, again = raw(fake, "POST", "/v1/customers",
                                 "email=a%40b.test&metadata[plan]=pro&metadata[empty]=",
                                 {"Idempotency-Key": "raw-1"})
    assert status == 200 and again == body and headers["Idempotent-Replayed"] == "true"

    status, _, listed = raw(fake, "GET", "/v1/customers?email=a%40b.test&limit=1")
    assert status == 200 and listed["object"] == "list" and listed["url"] == "/v1/customers"
    assert [c["id"] for c in listed["data"]] == [body["id"]]

    status, _, error = raw(fake, "GET", "/v1/nothing")
    assert status == 404 and error["error"]["type"] == "invalid_request_error"
    status, _, error = raw(fake, "GET", "/v1/customers", headers={"Authorization": ""})
    assert status == 401 and "API key" in error["error"]["message"]


def test_lists_are_newest_first_and_paginate(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    ids = [draft_invoice(client, customer.id, f"INV-{n}").id for n in range(3)]

    page = client.v1.invoices.list({"customer": customer.id, "limit": 2})
    assert [i.id for i in page.data] == [ids[2], ids[1]] and page.has_more is True
    rest = client.v1.invoices.list({"customer": customer.id, "limit": 2,
                                    "starting_after": ids[1]})
    assert [i.id for i in rest.data] == [ids[0]] and rest.has_more is False
    everything = client.v1.invoices.list({"customer": customer.id, "limit": 1})
    assert [i.id for i in everything.auto_paging_iter()] == ids[::-1]


def test_customers_are_searched_by_metadata_and_email_and_paged(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    made = [client.v1.customers.create({"email": f"b{n}@acme.test", "metadata": {"org_id": f"o'{n % 2}"}}).id
            for n in range(5)]

    first = client.v1.customers.search({"query": "metadata['org_id']:'o\\'0'", "limit": 2})
    rest = client.v1.customers.search({"query": "metadata['org_id']:'o\\'0'", "limit": 2, "page": first.next_page})
    by_email = client.v1.customers.search({"query": "email:'b3@acme.test' AND metadata['org_id']:'o\\'1'"})

    assert [c.id for c in first.data] == [made[4], made[2]] and first.has_more
    assert [c.id for c in rest.data] == [made[0]] and not rest.has_more and rest.next_page is None
    assert [c.id for c in by_email.data] == [made[3]]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.search({"query": "name~'Acme'"})


def test_expand_and_pending_items(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    pending = client.v1.invoice_items.create({"customer": customer.id, "amount": 500})
    assert pending.invoice is None
    invoice = draft_invoice(client, customer.id, pending_invoice_items_behavior="include")
    assert invoice.total == 500

    expanded = client.v1.invoices.retrieve(invoice.id, {"expand": ["customer"]})
    assert expanded.customer.email == "billing@acme.test"
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client.v1.invoices.retrieve(invoice.id, {"expand": ["number"]})


def test_long_invoices_embed_ten_lines_and_page_the_rest(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    for n in range(12):
        client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id,
                                        "amount": n + 1, "description": f"line {n}"})
    invoice = client.v1.invoices.retrieve(invoice.id)
    assert len(invoice.lines.data) == 10 and invoice.lines.has_more is True
    assert invoice.lines.total_count == 12 and invoice.total == sum(range(1, 13))
    everything = [line.description for line in invoice.lines.auto_paging_iter()]
    assert everything == [f"line {n}" for n in range(12)]  # oldest first, via /lines


def test_concurrent_clients_keep_totals_consistent(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    fake.latency = 0.01

    def add(n: int) -> str:
        return client.v1.invoice_items.create(
            {"customer": customer.id, "invoice": invoice.id, "amount": 100},
            options={"idempotency_key": f"line-{n % 10}"}).id  # every key used twice

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(add, range(20)))
    assert len(set(ids)) == 10 and len(fake.invoice_items) == 10
    assert fake.invoices[invoice.id]["total"] == 1000


# --- idempotency ------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_same_object_and_creates_nothing(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    first = draft_invoice(client, customer.id)
    again = draft_invoice(client, customer.id)

    assert again.id == first.id and len(fake.invoices) == 1
    replays = [r.replayed for r in fake.requests_for("POST", "/v1/invoices")]
    assert replays == [False, True]
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"


def test_same_key_with_other_parameters_is_an_idempotency_error(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    draft_invoice(client, customer.id, "INV-1")
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.invoices.create({"customer": customer.id, "collection_method": "send_invoice",
                                   "days_until_due": 14},
                                  options={"idempotency_key": "invoice-INV-1"})
    assert caught.value.http_status == 400
    with pytest.raises(stripe.IdempotencyError):  # same key, another endpoint
        client.v1.customers.create({"email": "x@y.test"},
                                   options={"idempotency_key": "invoice-INV-1"})
    assert len(fake.invoices) == 1 and len(fake.customers) == 1


def test_forgotten_keys_execute_again(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    first = draft_invoice(client, customer.id)
    fake.forget_idempotency_keys()
    assert draft_invoice(client, customer.id).id != first.id
    assert len(fake.invoices) == 2


# --- faults and retries -----------------------------------------------------------------------


def test_sdk_retries_a_500_with_the_same_key_and_the_retry_executes(fake: FakeStripeServer) -> None:
    client = client_for(fake, retries=2)
    customer = new_customer(client)
    fake.fail_next(1, 500, method="POST", path_prefix="/v1/invoices")

    invoice = draft_invoice(client, customer.id)

    attempts = fake.requests_for("POST", "/v1/invoices")
    assert [r.status for r in attempts] == [500, 200]
    assert attempts[0].idempotency_key == attempts[1].idempotency_key == "invoice-INV-1"
    assert attempts[1].replayed is False
    assert list(fake.invoices) == [invoice.id]


def test_without_retries_a_500_raises_api_error(fake: FakeStripeServer) -> None:
    client = client_for(fake, retries=0)
    fake.fail_next(1, 500)
    with pytest.raises(stripe.APIError) as caught:
        new_customer(client)
    assert caught.value.http_status == 500 and fake.customers == {}
    assert new_customer(client).id.startswith("cus_")  # only the next request failed


def test_plain_429_is_not_retried_but_a_retryable_one_is(fake: FakeStripeServer) -> None:
    client = client_for(fake, retries=2)
    fake.fail_next(1, 429)
    with pytest.raises(stripe.RateLimitError):
        new_customer(client)
    assert len(fake.requests) == 1  # stripe-python does not retry 429 by itself

    fake.fail_next(1, 429, should_retry=True)  # Stripe's lock timeouts say Stripe-Should-Retry
    customer = new_customer(client)
    assert [r.status for r in fake.requests[1:]] == [429, 200]
    assert list(fake.customers) == [customer.id]


def test_lost_response_is_retried_and_replayed(fake: FakeStripeServer) -> None:
    client = client_for(fake, retries=1)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    fake.drop_next(1, path_prefix="/v1/invoiceitems")

    item = client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id,
                                           "amount": 1000},
                                          options={"idempotency_key": "INV-1-line-1"})

    attempts = fake.requests_for("POST", "/v1/invoiceitems")
    assert [(r.dropped, r.replayed) for r in attempts] == [(True, False), (False, True)]
    assert list(fake.invoice_items) == [item.id]
    assert fake.invoices[invoice.id]["total"] == 1000


def test_rate_limit_rejects_beyond_the_window(fake: FakeStripeServer) -> None:
    client = client_for(fake, retries=0)
    fake.rate_limit_per_second = 3
    outcomes = []
    for _ in range(5):
        try:
            client.v1.customers.list()
            outcomes.append("ok")
        except stripe.RateLimitError:
            outcomes.append("429")
    assert outcomes == ["ok", "ok", "ok", "429", "429"]
    assert fake.rejected_429 == 2


def test_latency_is_applied_to_every_request(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    fake.latency = 0.05
    started = time.monotonic()
    client.v1.customers.list()
    assert time.monotonic() - started >= 0.05


# --- errors -----------------------------------------------------------------------------------


def test_unknown_customer_is_an_invalid_request(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        draft_invoice(client, "cus_missing")
    assert (caught.value.code, caught.value.param) == ("resource_missing", "customer")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.retrieve("cus_missing")
    assert caught.value.http_status == 404


def test_bad_keys_are_authentication_errors(fake: FakeStripeServer) -> None:
    with pytest.raises(stripe.AuthenticationError):
        client_for(fake, key="pk_test_publishable").v1.customers.list()
    with FakeStripeServer(api_keys={KEY}) as strict:
        client_for(strict).v1.customers.list()
        with pytest.raises(stripe.AuthenticationError, match="Invalid API Key"):
            client_for(strict, key="sk_test_other").v1.customers.list()


def test_invoice_state_rules(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(invoice.id)  # drafts are deleted, not voided
    client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id, "amount": 250})
    client.v1.invoices.finalize_invoice(invoice.id)

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id,
                                        "amount": 100})
    assert caught.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.finalize_invoice(invoice.id)
    assert client.v1.invoices.void_invoice(invoice.id).status == "void"
    assert fake.invoices[invoice.id]["total"] == 250 and len(fake.invoice_items) == 1


def test_an_invoice_with_nothing_due_is_paid_on_finalization_and_items_may_be_negative(fake) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    for amount in (-800, 800):
        client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id, "amount": amount})

    finalized = client.v1.invoices.finalize_invoice(invoice.id)

    assert (finalized.status, finalized.total, finalized.amount_due) == ("paid", 0, 0)
    assert finalized.status_transitions.paid_at is not None


def test_item_must_fit_its_invoice(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer, other = new_customer(client), new_customer(client, "other@acme.test")
    invoice = draft_invoice(client, customer.id)
    with pytest.raises(stripe.InvalidRequestError, match="currency"):
        client.v1.invoice_items.create({"customer": customer.id, "invoice": invoice.id,
                                        "amount": 100, "currency": "eur"})
    with pytest.raises(stripe.InvalidRequestError, match="belongs to customer"):
        client.v1.invoice_items.create({"customer": other.id, "invoice": invoice.id,
                                        "amount": 100})
    assert fake.invoice_items == {}


def test_parameters_are_validated_like_stripe(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    with pytest.raises(stripe.InvalidRequestError, match="days_until_due"):
        client.v1.invoices.create({"customer": customer.id, "collection_method": "send_invoice"})
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: unit_amount") as caught:
        client.v1.invoice_items.create({"customer": customer.id, "quantity": 2,
                                        "unit_amount": 100})  # type: ignore[typeddict-unknown-key]
    assert caught.value.code == "parameter_unknown"
    with pytest.raises(stripe.InvalidRequestError, match="Invalid integer"):
        client.v1.invoice_items.create({"customer": customer.id,
                                        "amount": "12.50"})  # type: ignore[typeddict-item]
    assert fake.invoices == {} and fake.invoice_items == {}


def test_reset_and_stop(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    new_customer(client)
    fake.fail_next(3, 503)
    fake.reset()
    assert fake.snapshot()["customers"] == {} and fake.requests == []
    assert new_customer(client).id == "cus_000001"

    fake.stop()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()


def test_sending_a_draft_finalizes_it_and_add_lines_is_all_or_nothing(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    customer = new_customer(client)
    invoice = draft_invoice(client, customer.id)
    with pytest.raises(stripe.InvalidRequestError):  # one bad line: none is added
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                           lines=[{"amount": 100, "description": "ok"}, {"description": "no amount"}])
    assert fake.invoices[invoice.id]["lines"]["data"] == []
    client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                       lines=[{"amount": 100, "description": "a"}, {"amount": -30, "description": "b"}])

    sent = client.v1.invoices.send_invoice(invoice.id)  # "Stripe finalizes drafts before sending"

    assert (sent.status, sent.total) == ("open", 70) and fake.sent_invoices[invoice.id]
    with pytest.raises(stripe.InvalidRequestError) as caught:  # lines only on a draft
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines", lines=[{"amount": 1}])
    assert caught.value.code == "invoice_not_editable"


# --- taxes ------------------------------------------------------------------------------------


def test_tax_rates_on_lines_are_computed_per_line_by_default_and_per_invoice_when_set(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    vat = client.v1.tax_rates.create({"display_name": "VAT", "percentage": 20, "inclusive": False, "country": "GB",
                                      "tax_type": "vat"}, options={"idempotency_key": "rate-1"})
    again = client.v1.tax_rates.create({"display_name": "VAT", "percentage": 20, "inclusive": False, "country": "GB",
                                        "tax_type": "vat"}, options={"idempotency_key": "rate-1"})
    invoice = draft_invoice(client, new_customer(client).id)
    # 4,903 x 20% = 980.6 -> 981 and 12,468 x 20% = 2,493.6 -> 2,494: 3,475 rounded per line;
    # (4,903 + 12,468) x 20% = 3,474.2 -> 3,474 rounded once on the invoice.
    client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                       lines=[{"amount": 4903, "tax_rates": [vat.id]}, {"amount": 12468, "tax_rates": [vat.id]}])

    line_item = fake.invoices[invoice.id]
    fake.tax_rounding = "invoice"
    per_invoice = fake.invoices[invoice.id]

    assert again.id == vat.id and len(fake.tax_rates) == 1 and vat.percentage == 20.0
    assert [t["amount"] for line in line_item["lines"]["data"] for t in line["taxes"]] == [981, 2494]
    assert (line_item["subtotal"], line_item["total"]) == (17371, 20846)
    assert per_invoice["total_taxes"][0] == {"amount": 3474, "tax_behavior": "exclusive",
                                                  "tax_rate_details": {"tax_rate": vat.id},
                                                  "taxability_reason": "standard_rated", "taxable_amount": 17371,
                                                  "type": "tax_rate_details"}
    assert per_invoice["total"] == 20845
    sent = client.v1.invoices.send_invoice(invoice.id)
    fake.tax_rounding = "line_item"  # a finalized invoice keeps its amounts
    assert sent.total == 20845 and fake.invoices[invoice.id]["total"] == 20845


def _vat(amount: int, taxable: int, percentage: str = "19") -> dict[str, object]:
    """One `tax_amounts` entry, as billing sends it."""
    return {"amount": amount, "taxable_amount": taxable, "taxability_reason": "standard_rated",
            "tax_rate_data": {"display_name": "VAT", "percentage": percentage, "inclusive": False, "country": "DE",
                              "jurisdiction": "DE", "jurisdiction_level": "country", "tax_type": "vat"}}


def test_tax_amounts_are_added_as_given_whatever_the_rounding_on_an_archived_tax_rate_made_once(
        fake: FakeStripeServer) -> None:
    """Taxes calculated outside Stripe: 1,050 + 1,050 at 19% is 399 on the subtotal, sent as 200 + 199;
    Stripe's per-line rounding of a TaxRate would have made it 200 + 200."""
    client = client_for(fake)
    customer = new_customer(client).id
    first, second = draft_invoice(client, customer, "INV-1"), draft_invoice(client, customer, "INV-2")

    for invoice in (first, second):
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                           lines=[{"amount": 1050, "tax_amounts": [_vat(200, 1050)]},
                                  {"amount": 1050, "tax_amounts": [_vat(199, 1050)]}])

    added = fake.invoices[first.id]
    assert fake.tax_rounding == "line_item"
    assert (added["subtotal"], added["total"]) == (2100, 2499)
    assert [[t["amount"] for t in line["taxes"]] for line in added["lines"]["data"]] == [[200], [199]]
    assert [line["tax_rates"] for line in added["lines"]["data"]] == [[], []]
    [rate] = fake.tax_rates.values()  # one TaxRate for both invoices: the same data
    assert (rate["display_name"], rate["percentage_decimal"], rate["jurisdiction"], rate["active"]) == \
        ("VAT", "19", "DE", False)
    assert added["total_taxes"] == [{"amount": 399, "tax_behavior": "exclusive", "tax_rate_details": {"tax_rate": rate["id"]},
                                     "taxability_reason": "standard_rated", "taxable_amount": 2100,
                                     "type": "tax_rate_details"}]
    fake.tax_rounding = "invoice"
    assert fake.invoices[first.id]["total"] == 2499  # the account's setting is for TaxRates only
    with pytest.raises(stripe.InvalidRequestError, match="archived"):  # Stripe's own, not for lines
        client.raw_request("post", f"/v1/invoices/{second.id}/add_lines", lines=[{"amount": 1, "tax_rates": [rate["id"]]}])


def test_tax_amounts_beside_tax_rates_or_a_fraction_stripe_cannot_charge_are_refused_and_add_no_line(
        fake: FakeStripeServer) -> None:
    client = client_for(fake)
    vat = client.v1.tax_rates.create({"display_name": "VAT", "percentage": 20, "inclusive": False})
    invoice = draft_invoice(client, new_customer(client).id)
    kwd = draft_invoice(client, new_customer(client, "kw@acme.test").id, "INV-KW", currency="kwd")

    with pytest.raises(stripe.InvalidRequestError, match="cannot set tax amounts if any line item has tax_rates"):
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                           lines=[{"amount": 100, "tax_rates": [vat.id]}, {"amount": 100, "tax_amounts": [_vat(19, 100)]}])
    client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines", lines=[{"amount": 100, "tax_rates": [vat.id]}])
    with pytest.raises(stripe.InvalidRequestError, match="cannot set tax amounts if any line item has tax_rates"):
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                           lines=[{"amount": 100, "tax_amounts": [_vat(19, 100)]}])
    with pytest.raises(stripe.InvalidRequestError, match="evenly divisible by 10"):  # 0.501 KWD
        client.raw_request("post", f"/v1/invoices/{kwd.id}/add_lines",
                           lines=[{"amount": 10010, "tax_amounts": [_vat(501, 10010, "5")]}])
    with pytest.raises(stripe.InvalidRequestError, match="Missing required param"):
        client.raw_request("post", f"/v1/invoices/{kwd.id}/add_lines",
                           lines=[{"amount": 10010, "tax_amounts": [{"amount": 500, "taxable_amount": 10010}]}])

    assert len(fake.invoices[invoice.id]["lines"]["data"]) == 1 and fake.invoices[kwd.id]["lines"]["data"] == []
    assert list(fake.tax_rates) == [vat.id]


def test_an_unknown_or_inclusive_tax_rate_is_refused_and_adds_no_line(fake: FakeStripeServer) -> None:
    client = client_for(fake)
    invoice = draft_invoice(client, new_customer(client).id)

    with pytest.raises(stripe.InvalidRequestError, match="No such tax_rate: 'txr_missing'"):
        client.raw_request("post", f"/v1/invoices/{invoice.id}/add_lines",
                           lines=[{"amount": 100}, {"amount": 200, "tax_rates": ["txr_missing"]}])
    with pytest.raises(stripe.InvalidRequestError, match="exclusive tax rates only"):
        client.v1.tax_rates.create({"display_name": "VAT", "percentage": 20, "inclusive": True})
    with pytest.raises(stripe.InvalidRequestError, match="Invalid percentage"):
        client.v1.tax_rates.create({"display_name": "VAT", "percentage": "12.34567", "inclusive": False})

    assert fake.invoices[invoice.id]["lines"]["data"] == [] and fake.tax_rates == {}
