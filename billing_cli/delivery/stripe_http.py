"""The Stripe SDK's HTTP transport over urllib3: one connection pool shared by all worker threads.

The SDK's default transport (requests) costs about twice the CPU per call: it re-reads the
proxy environment on every request and builds a request object that nothing here needs. With
dozens of calls per second on one interpreter, that CPU is what limits a run. This class plugs
into the SDK's documented `http_client=` hook; the SDK still does everything else (auth, API
version, idempotency keys, retries with backoff, error types).

Behaviour kept from the default transport: certificates verified against the SDK's own CA
bundle, HTTPS_PROXY/HTTP_PROXY/NO_PROXY honoured (read once per host), timeouts and connection
errors retried by the SDK, TLS errors not.
"""

from __future__ import annotations

import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import stripe
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError, TimeoutError


class Urllib3Client(stripe.HTTPClient):
    name = "urllib3"

    def __init__(self, *, timeout_seconds: float = 30.0, max_connections: int = 10) -> None:
        super().__init__()
        self._timeout = urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds)
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str], urllib3.PoolManager] = {}  # (scheme, host) -> pool

    def _pool(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                options: dict[str, Any] = {"num_pools": 4, "maxsize": self._max_connections, "block": False,
                                           "retries": False, "timeout": self._timeout,
                                           "cert_reqs": "CERT_REQUIRED", "ca_certs": stripe.ca_bundle_path}
                proxy = None if urllib.request.proxy_bypass(key[1]) else urllib.request.getproxies().get(key[0])
                pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                self._pools[key] = pool
            return pool

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> tuple[bytes, int, Any]:
        try:
            response = self._pool(url).request(method.upper(), url, body=post_data, headers=dict(headers or {}),
                                               redirect=False, preload_content=True)
        except SSLError as exc:
            raise stripe.APIConnectionError(f"Could not verify Stripe's TLS certificate: {exc}",
                                            should_retry=False) from exc
        except (TimeoutError, NewConnectionError, ProtocolError, ConnectionError) as exc:
            raise stripe.APIConnectionError(f"Unexpected error communicating with Stripe: {type(exc).__name__}",
                                            should_retry=True) from exc
        except HTTPError as exc:
            raise stripe.APIConnectionError(f"Unexpected error communicating with Stripe: {type(exc).__name__}",
                                            should_retry=False) from exc
        return response.data, response.status, response.headers

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.clear()
            self._pools.clear()
