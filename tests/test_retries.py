"""The retry policy of every outside call (delivery/retries.py): transient failures are retried
within the budget, and once the run is told to stop (SIGTERM) no new attempt starts and a backoff
under way ends, so the pod stops within Kubernetes' grace period; the next run completes the step."""

from __future__ import annotations

import threading

import pytest

from billing_cli.delivery.retries import retrying


class Down(Exception):
    pass


def failing(calls: list[int], on_failure=lambda: None):
    def call() -> None:
        calls.append(1)
        on_failure()
        raise Down(f"attempt {len(calls)}")
    return call


def test_transient_failures_are_retried_up_to_the_attempts() -> None:
    calls: list[int] = []
    policy = retrying(lambda exc: isinstance(exc, Down), attempts=4, seconds=60, multiplier=0.001, longest=0.001)
    with pytest.raises(Down, match="attempt 4"):
        policy(failing(calls))
    assert len(calls) == 4


def test_a_permanent_failure_is_not_retried() -> None:
    calls: list[int] = []
    policy = retrying(lambda exc: False, attempts=4, seconds=60, multiplier=0.001, longest=0.001)
    with pytest.raises(Down, match="attempt 1"):
        policy(failing(calls))
    assert len(calls) == 1


def test_no_attempt_starts_once_the_run_is_told_to_stop() -> None:
    calls: list[int] = []
    stopping = threading.Event()
    stopping.set()
    policy = retrying(lambda exc: isinstance(exc, Down), attempts=4, seconds=60, multiplier=0.001, longest=0.001,
                      stopping=stopping)
    with pytest.raises(Down, match="attempt 1"):
        policy(failing(calls))
    assert len(calls) == 1


def test_a_backoff_under_way_ends_when_the_run_is_told_to_stop() -> None:
    """The backoff would wait up to 10 minutes: SIGTERM during it ends it, the attempt then under
    way is the last one (it fails with its own error)."""
    calls: list[int] = []
    stopping = threading.Event()

    def after_first_failure() -> None:
        if len(calls) == 1:
            threading.Timer(0.05, stopping.set).start()

    policy = retrying(lambda exc: isinstance(exc, Down), attempts=10, seconds=3600, multiplier=600, longest=600,
                      stopping=stopping)
    with pytest.raises(Down, match="attempt 2"):
        policy(failing(calls, after_first_failure))
    assert len(calls) == 2


class ClosingServer:
    """A real TCP server that accepts every connection and closes it at once (a peer that is
    down behind its load balancer), counting the connections: each is one attempt."""

    def __init__(self) -> None:
        import socket

        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def closing_server():
    server = ClosingServer()
    yield server
    server.close()


def test_s3_and_stripe_calls_of_a_stopping_run_make_one_attempt(closing_server, monkeypatch) -> None:
    """Three attempts each while the run goes on; one once it is stopping (the connections the
    peer saw: a third as many)."""
    from billing_cli.delivery.payments import PaymentError, StripeGateway
    from billing_cli.delivery.storage import S3Store, StorageError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")

    def connections(call) -> int:
        before = closing_server.connections
        call()
        return closing_server.connections - before

    seen = {}
    for name, event in (("running", threading.Event()), ("stopping", threading.Event())):
        if name == "stopping":
            event.set()
        store = S3Store("invoices", "us-east-1", endpoint_url=closing_server.url, max_attempts=3,
                        max_retry_seconds=60, stopping=event)
        gateway = StripeGateway("sk_test_x", api_base=closing_server.url, max_attempts=3, stopping=event)

        def put() -> None:
            with pytest.raises(StorageError, match="Connection was closed"):
                store.put("invoices/x.pdf", b"%PDF", invoice_number="INV-1")

        def create() -> None:
            with pytest.raises(PaymentError, match="cannot reach Stripe"):
                gateway.create_customer("org-1", "Org", "org@example.com")

        seen[name] = (connections(put), connections(create))
    assert seen["running"] == tuple(3 * n for n in seen["stopping"]) and seen["stopping"][1] == 1, seen
