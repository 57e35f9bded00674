"""Issuing invoices in blocks: one transaction takes consecutive numbers for several invoices;
numbers stay gapless whatever fails, and each invoice is stored as if it had been issued alone."""

from __future__ import annotations

import threading
from datetime import date
from decimal import Decimal as D

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError

from billing_cli.composition import compose
from billing_cli.db import invoice_store
from billing_cli.db.invoice_store import IssueRequest, StalePlan, StoredInvoice
from billing_cli.db.plan_store import save_plans
from billing_cli.db.grouped import Ticket as _Ticket
from billing_cli.jobs.invoicing.issuing import block_writer
from billing_cli.periods import Month
from billing_cli.plan_file import parse_plans
from tests.data import PLANS, add_org

JAN = Month(2024, 1)
PRO = {plan.id: plan for plan in parse_plans(PLANS)}["pro"]


def request(org: str, calls: str = "1500", *, planned_with: frozenset[int] = frozenset(),
            name: str | None = None) -> IssueRequest:
    invoice = compose(JAN, {"api_calls": D(calls)}, PRO, fees=lambda month: True)
    return IssueRequest(org, name or f"Company {org}", f"billing@{org}.example.com", invoice, {JAN: 3},
                        date(2024, 2, 1), date(2024, 3, 2), planned_with)


@pytest.fixture
def orgs(transactions):
    with transactions() as conn:
        save_plans(conn, parse_plans(PLANS))
        for org in ("org-a", "org-b", "org-c", "org-d"):
            add_org(conn, org)
    return transactions


def stored(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(
        "SELECT organization_id, number, total FROM invoices ORDER BY number"))]


def counter(conn) -> int | None:
    return conn.execute(text("SELECT last_number FROM invoice_number_counters WHERE period_start = '2024-01-01'")
                        ).scalar_one_or_none()


def test_a_block_takes_consecutive_numbers_and_stores_each_invoice_whole(orgs) -> None:
    with orgs() as conn:
        first = invoice_store.issue_invoices(conn, [request("org-a")])
        block = invoice_store.issue_invoices(conn, [request("org-b", "1"), request("org-c", "2500"),
                                                    request("org-d", "0")])
        assert [i.number for i in first + block] == [f"INV-2024-01-00000{n}" for n in (1, 2, 3, 4)]
        assert [i.organization_id for i in block] == ["org-b", "org-c", "org-d"]
        assert stored(conn) == [("org-a", "INV-2024-01-000001", D("22.50")), ("org-b", "INV-2024-01-000002", D("10.01")),
                                ("org-c", "INV-2024-01-000003", D("27.50")), ("org-d", "INV-2024-01-000004", D("10.00"))]
        assert counter(conn) == 4
        lines = conn.execute(text(
            "SELECT i.organization_id, l.line_no, l.kind, l.metric, l.description, l.quantity, l.unit_price, "
            "l.amount, l.period_start FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
            "WHERE i.organization_id = 'org-c' ORDER BY l.line_no")).all()
        expected = request("org-c", "2500").invoice.lines
        assert [tuple(r)[1:] for r in lines] == [
            (n, line.kind, line.metric, line.description, line.quantity, line.unit_price, line.amount,
             date(2024, 1, 1)) for n, line in enumerate(expected, start=1)]
        usage = conn.execute(text("SELECT i.organization_id, u.period_start, u.metric, u.quantity FROM invoice_usage u "
                                  "JOIN invoices i ON i.id = u.invoice_id ORDER BY 1")).all()
        assert [tuple(r) for r in usage] == [(org, date(2024, 1, 1), "api_calls", D(q)) for org, q in
                                             (("org-a", "1500"), ("org-b", "1"), ("org-c", "2500"))]  # no usage, none recorded
        periods = conn.execute(text("SELECT i.organization_id, p.period_start, p.revision FROM invoice_periods p "
                                    "JOIN invoices i ON i.id = p.invoice_id ORDER BY 1")).all()
        assert [tuple(r) for r in periods] == [(org, date(2024, 1, 1), 3) for org in ("org-a", "org-b", "org-c", "org-d")]
        ids = conn.execute(text("SELECT number, id FROM invoices")).all()
        assert {i.number: i.id for i in first + block} == dict(ids)


def test_a_stale_plan_in_a_block_takes_no_number(orgs) -> None:
    with orgs() as conn:
        (earlier,) = invoice_store.issue_invoices(conn, [request("org-b")])
        invoice_store.void_invoice(conn, earlier.id, "test")
        (live,) = invoice_store.issue_invoices(conn, [request("org-c")])
        # org-b's plan knows of no live invoice (right); org-c's too (wrong: it has one now).
        results = invoice_store.issue_invoices(conn, [request("org-a"), request("org-c"), request("org-b")])
        assert isinstance(results[1], StalePlan)
        assert [r.number for r in results if isinstance(r, StoredInvoice)] == ["INV-2024-01-000003",
                                                                               "INV-2024-01-000004"]
        assert counter(conn) == 4
        assert [o for o, *_ in stored(conn)] == ["org-b", "org-c", "org-a", "org-b"]
        with pytest.raises(StalePlan):
            invoice_store.issue_invoice(conn, organization_id="org-c", bill_to_name="x", bill_to_email="x@y.z",
                                        invoice=request("org-c").invoice, revisions={}, issue_date=date(2024, 2, 1),
                                        due_date=date(2024, 3, 2), planned_with=frozenset())

    with pytest.raises(IntegrityError, match="uq_invoices_one_live_per_org_month"), orgs() as conn:
        # A plan that knows of the live invoice and issues another anyway: the unique index stops it.
        invoice_store.issue_invoices(conn, [request("org-a"), request("org-c", planned_with=frozenset({live.id}))])
    with orgs() as conn:
        assert counter(conn) == 4  # the whole block rolled back: no number taken


def test_a_block_that_fails_is_issued_again_one_by_one_and_only_the_bad_invoice_fails(orgs) -> None:
    issuer = block_writer(orgs)
    tickets = [_Ticket(request("org-a")), _Ticket(request("org-b", name="x" * 300)),  # over varchar(255)
               _Ticket(request("org-c"))]
    issuer._write_block(tickets)

    assert all(t.done for t in tickets)
    assert isinstance(tickets[1].error, DataError) and tickets[1].result is None
    assert [t.result.number for t in (tickets[0], tickets[2])] == ["INV-2024-01-000001", "INV-2024-01-000002"]
    with orgs() as conn:
        assert [o for o, *_ in stored(conn)] == ["org-a", "org-c"]
        assert counter(conn) == 2  # the failed block and the failed invoice took no number


def test_an_invoice_the_unique_index_refuses_fails_alone_and_the_others_are_issued(orgs) -> None:
    with orgs() as conn:
        (live,) = invoice_store.issue_invoices(conn, [request("org-b")])
    tickets = [_Ticket(request("org-a")), _Ticket(request("org-b", planned_with=frozenset({live.id}))),
               _Ticket(request("org-c"))]
    block_writer(orgs)._write_block(tickets)

    assert isinstance(tickets[1].error, IntegrityError)
    assert "uq_invoices_one_live_per_org_month" in str(tickets[1].error.orig)
    assert [t.result.number for t in (tickets[0], tickets[2])] == ["INV-2024-01-000002", "INV-2024-01-000003"]
    with orgs() as conn:
        assert counter(conn) == 3


def test_many_threads_issue_gapless_unique_numbers(engine) -> None:
    with engine.begin() as conn:
        save_plans(conn, parse_plans(PLANS))
        for n in range(40):
            add_org(conn, f"org-{n:02d}")
    issuer = block_writer(engine.begin, max_block=5)
    start = threading.Barrier(8)
    issued: list[StoredInvoice] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        start.wait()
        for n in range(k, 40, 8):
            try:
                issued.append(issuer.submit(request(f"org-{n:02d}", str(n))))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(i.number for i in issued) == [f"INV-2024-01-{n:06d}" for n in range(1, 41)]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, number FROM invoices")).all()
        lines = conn.execute(text("SELECT count(DISTINCT invoice_id) FROM invoice_lines")).scalar_one()
        assert counter(conn) == 40
    assert sorted(rows) == sorted((i.organization_id, i.number) for i in issued)
    assert len({org for org, _ in rows}) == 40 and lines == 40


def test_pdf_records_written_together_or_alone(orgs) -> None:
    with orgs() as conn:
        a, b = invoice_store.issue_invoices(conn, [request("org-a"), request("org-b")])
    recorder = block_writer(orgs)
    tickets = [_Ticket(invoice_store.PdfRecord(a.id, "a" * 64, 100, "/out/a.pdf")),
               _Ticket(invoice_store.PdfRecord(b.id, "b" * 64, 200, None))]
    recorder._write_block(tickets)
    bad = [_Ticket(invoice_store.PdfRecord(a.id, "c" * 64, 300, None)),
           _Ticket(invoice_store.PdfRecord(b.id, "d" * 65, 400, None))]  # too long for char(64)
    recorder._write_block(bad)

    assert all(t.done and t.error is None for t in tickets + bad[:1])
    assert isinstance(bad[1].error, DataError)
    with orgs() as conn:
        rows = conn.execute(text("SELECT organization_id, pdf_sha256, pdf_bytes, pdf_path FROM invoices "
                                 "ORDER BY organization_id")).all()
    assert [tuple(r) for r in rows] == [("org-a", "c" * 64, 300, "/out/a.pdf"), ("org-b", "b" * 64, 200, None)]


def test_organization_locks_taken_together_are_each_their_own(engine) -> None:
    from billing_cli.runs.lifecycle import LockGuard

    with engine.connect() as mine, engine.connect() as theirs:
        mine = mine.execution_options(isolation_level="AUTOCOMMIT")
        theirs = theirs.execution_options(isolation_level="AUTOCOMMIT")
        guard, other = LockGuard(mine, "invoice:2024-01:1/1"), LockGuard(theirs, "invoice:2024-01:2/2")
        ids = [f"org-{n:02d}" for n in range(24)]
        start = threading.Barrier(8)
        held: dict[str, bool] = {}
        release = threading.Event()

        def worker(k: int) -> None:
            start.wait()
            for org in ids[k::8]:
                with guard.hold(org) as alone:
                    held[org] = alone
            with guard.hold(f"kept-{k}") as alone:
                held[f"kept-{k}"] = alone
                release.wait(10)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        while len(held) < len(ids) + 8:
            threading.Event().wait(0.01)
        assert all(held.values())
        # While this run holds them, another session gets none of those still held, and all the others.
        with other.hold("kept-3") as alone:
            assert not alone
        with other.hold("org-05") as alone:
            assert alone
        release.set()
        for thread in threads:
            thread.join()
        with other.hold("kept-3") as alone:
            assert alone
        assert mine.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND pid = pg_backend_pid()")).scalar_one() == 0
