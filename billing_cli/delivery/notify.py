"""Completion notifications: an e-mail to NOTIFY_EMAIL and a signed JSON webhook.

A notification that cannot be delivered is reported as a warning; it never fails the billing run.

Webhook signature: header `Billing-Signature: t=<unix seconds>,v1=<hex>` where
`<hex> = HMAC-SHA256(NOTIFY_WEBHOOK_SECRET, "<t>.<raw body>")` (verification: docs/operations.md).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage

from ..config.secret import mask_url_password
from ..summary import RunSummary
from .mailer import Mailer, MailError
from .retries import retrying

SIGNATURE_HEADER = "Billing-Signature"


class NotifyError(Exception):
    pass


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def notification_email(summary: RunSummary, *, sender: str, recipient: str) -> EmailMessage:
    failed = summary.counts.get("failed") or summary.counts.get("failed_hours") or 0
    detail = f" ({failed} failed)" if failed else ""
    message = EmailMessage()
    message["Subject"] = (f"[billing] {summary.job} {summary.period}: {summary.outcome}{detail}"
                          f"{' (dry run)' if summary.dry_run else ''}")
    message["From"] = sender
    message["To"] = recipient
    message.set_content(summary.text())
    return message


@dataclass(frozen=True)
class EmailNotifier:
    mailer: Mailer
    sender: str
    recipient: str

    def notify(self, summary: RunSummary) -> None:
        try:
            self.mailer.send(notification_email(summary, sender=self.sender, recipient=self.recipient))
        except MailError as exc:
            raise NotifyError(f"completion e-mail to {self.recipient} failed: {exc}") from None
        finally:
            self.mailer.close()


@dataclass(frozen=True)
class WebhookNotifier:
    url: str
    secret: str
    timeout_seconds: float = 10
    max_attempts: int = 4
    max_wait_seconds: float = 30

    def __repr__(self) -> str:
        return f"WebhookNotifier(url={self._shown!r})"  # never the secret, nor a token in the URL

    @property
    def _shown(self) -> str:
        return mask_url_password(self.url, keep_user=False)

    def notify(self, summary: RunSummary) -> None:
        body = json.dumps(summary.as_dict(), sort_keys=True).encode()
        # No stop event: the notice goes out after the run, also the one of a run SIGTERM interrupted.
        policy = retrying(_transient, attempts=self.max_attempts, seconds=self.max_wait_seconds, multiplier=0.2,
                          longest=5)
        try:
            policy(self._post, body)
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"webhook {self._shown} answered {exc.code}") from None
        except OSError as exc:
            raise NotifyError(f"webhook {self._shown} unreachable: {str(exc).replace(self.url, self._shown)}") from None
        except http.client.HTTPException as exc:
            # A port that does not speak HTTP (TLS-only, SSH, a misrouted proxy): BadStatusLine and kin.
            raise NotifyError(f"webhook {self._shown} did not answer in HTTP ({type(exc).__name__})") from None

    def _post(self, body: bytes) -> None:
        timestamp = int(time.time())
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "billing-notifier",
            SIGNATURE_HEADER: signature(self.secret, timestamp, body)})
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
            response.read()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))
