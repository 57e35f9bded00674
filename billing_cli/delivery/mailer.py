"""E-mail over SMTP: implicit TLS, STARTTLS (certificate verified) or plain, AUTH when configured.

Transient failures (connection errors, timeouts, 4xx replies) are retried with exponential
backoff and jitter; permanent ones (5xx, authentication) are not.

Sessions are reused: a run sends one message per invoice, and a new session per message would
cost a TCP (and TLS) handshake, EHLO and AUTH each time. An idle session is checked with RSET
before it carries a message, so a session the server has closed is replaced before anything is
sent; a session that saw any error is closed, never reused. `close()` ends them with QUIT.
"""

from __future__ import annotations

import functools
import os
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal, Protocol

from .breaker import CircuitBreaker, CircuitOpen
from .retries import retrying

Security = Literal["ssl", "starttls", "none"]


class MailError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class _DataTracking:
    """Knows whether the message itself was sent (DATA) before a failure: after that, the server
    may have accepted it even if its answer never came."""

    data_started = False

    def data(self, msg):  # type: ignore[no-untyped-def]
        self.data_started = True
        return super().data(msg)  # type: ignore[misc]


class _SMTP(_DataTracking, smtplib.SMTP):
    pass


class _SMTP_SSL(_DataTracking, smtplib.SMTP_SSL):
    pass


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


class _Sessions:
    """Idle SMTP sessions, shared by the worker threads (each session used by one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[smtplib.SMTP] = []

    def take(self) -> smtplib.SMTP | None:
        """The most recently used idle session that still answers RSET, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                smtp = self._idle.pop()
            try:
                if smtp.rset()[0] == 250:
                    return smtp
            except (smtplib.SMTPException, OSError):
                pass
            _drop(smtp)

    def give_back(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append(smtp)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for smtp in idle:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                _drop(smtp)


def _drop(smtp: smtplib.SMTP) -> None:
    """Close the socket without a goodbye (the session is broken or in an unknown state)."""
    try:
        smtp.close()
    except OSError:
        pass


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # revealed from the Secret only here, at the call
    timeout_seconds: float = 30.0
    max_attempts: int = 4
    max_wait_seconds: float = 60.0
    ssl_context: ssl.SSLContext | None = None  # tests pass one trusting their own certificate
    breaker_failures: int = 5
    stopping: threading.Event | None = field(default=None, compare=False)  # the run's SIGTERM (retries.py)
    _sessions: _Sessions = field(default_factory=_Sessions, init=False, repr=False, compare=False)
    _breaker: CircuitBreaker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_breaker", CircuitBreaker(
            "the SMTP server", failures=self.breaker_failures,
            is_transient=lambda exc: isinstance(exc, MailError) and exc.transient))

    def send(self, message: EmailMessage) -> None:
        policy = retrying(lambda exc: isinstance(exc, MailError) and exc.transient, attempts=self.max_attempts,
                          seconds=self.max_wait_seconds, multiplier=0.5, longest=10, stopping=self.stopping)
        try:
            self._breaker.call(lambda: policy(self._send_once, message))
        except CircuitOpen as exc:
            raise MailError(str(exc), transient=True) from None

    def _context(self) -> ssl.SSLContext:
        """One TLS context per mailer: building it loads the CA store (~17 ms of CPU each time)."""
        if self.ssl_context is not None:
            return self.ssl_context
        return _default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))

    def close(self) -> None:
        """End the idle sessions (QUIT). The mailer stays usable: a later send opens a new one."""
        self._sessions.close()

    def _send_once(self, message: EmailMessage) -> None:
        smtp = self._sessions.take()
        try:
            if smtp is None:
                smtp = self._connect()
            smtp.data_started = False  # type: ignore[attr-defined]
            smtp.send_message(message)
        except Exception as exc:
            if smtp is not None:
                _drop(smtp)
            answered = isinstance(exc, smtplib.SMTPResponseException)  # a refusal is an answer: resend is safe
            if getattr(smtp, "data_started", False) and isinstance(exc, OSError) and not answered:
                # The message went out and the answer did not come back: it may well have been
                # accepted. Sending it again now could deliver it twice; the next run sends it
                # (with the same Message-ID, so mail systems can tell) if it was not recorded.
                raise MailError(f"the SMTP server {self.host}:{self.port} did not confirm the message it was "
                                f"sent ({type(exc).__name__}): it may have been delivered; not sent again in "
                                "this run", transient=False) from None
            error = self._error(exc)
            if error is None:
                raise
            raise error from None
        self._sessions.give_back(smtp)

    def _connect(self) -> smtplib.SMTP:
        context = self._context() if self.security != "none" else None
        if self.security == "ssl":
            smtp: smtplib.SMTP = _SMTP_SSL(self.host, self.port, timeout=self.timeout_seconds, context=context)
        else:
            smtp = _SMTP(self.host, self.port, timeout=self.timeout_seconds)
        try:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            _drop(smtp)
            raise
        return smtp

    def _error(self, exc: Exception) -> MailError | None:
        """The MailError (transient or not) for what smtplib raised; None for anything else."""
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return MailError(f"SMTP authentication failed ({exc.smtp_code}): check INVOICE_SMTP_USERNAME "
                             "and INVOICE_SMTP_PASSWORD", transient=False)
        if isinstance(exc, smtplib.SMTPResponseException):
            return MailError(f"SMTP server answered {exc.smtp_code} {_text(exc.smtp_error)}",
                             transient=400 <= exc.smtp_code < 500)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in exc.recipients.values()]
            return MailError(f"SMTP server refused the recipient ({', '.join(map(str, codes))})",
                             transient=all(400 <= c < 500 for c in codes))
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return MailError(f"SMTP server does not support this: {exc}", transient=False)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return MailError(f"SMTP server certificate rejected: {exc.verify_message}", transient=False)
        if isinstance(exc, (OSError, smtplib.SMTPException, socket.timeout)):
            return MailError(f"cannot talk to SMTP server {self.host}:{self.port}: {exc}", transient=True)
        return None


@functools.cache
def _default_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The system trust store (or SSL_CERT_FILE / SSL_CERT_DIR), read once per such setting."""
    return ssl.create_default_context()


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
