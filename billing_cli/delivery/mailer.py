"""E-mail over SMTP: implicit TLS, STARTTLS (certificate verified) or plain, AUTH when configured.

Transient failures (connection errors, timeouts, 4xx replies) are retried with exponential
backoff and jitter; permanent ones (5xx, authentication) are not.
"""

from __future__ import annotations

import functools
import os
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

Security = Literal["ssl", "starttls", "none"]


class MailError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class SmtpMailer:
    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = None  # revealed from the Secret only here, at the call
    timeout_seconds: float = 30.0
    max_attempts: int = 4
    max_wait_seconds: float = 60.0
    ssl_context: ssl.SSLContext | None = None  # tests pass one trusting their own certificate

    def send(self, message: EmailMessage) -> None:
        from tenacity import retry, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

        sender = retry(
            retry=retry_if_exception(lambda exc: isinstance(exc, MailError) and exc.transient),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_wait_seconds),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            reraise=True,
        )(self._send_once)
        sender(message)

    def _context(self) -> ssl.SSLContext:
        """One TLS context per mailer: building it loads the CA store (~17 ms of CPU each time)."""
        if self.ssl_context is not None:
            return self.ssl_context
        return _default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))

    def _send_once(self, message: EmailMessage) -> None:
        context = self._context() if self.security != "none" else None
        try:
            if self.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_seconds,
                                                      context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=context)
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(f"SMTP authentication failed ({exc.smtp_code}): check INVOICE_SMTP_USERNAME "
                            "and INVOICE_SMTP_PASSWORD", transient=False) from None
        except smtplib.SMTPResponseException as exc:
            transient = 400 <= exc.smtp_code < 500
            raise MailError(f"SMTP server answered {exc.smtp_code} {_text(exc.smtp_error)}",
                            transient=transient) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise MailError(f"SMTP server refused the recipient ({', '.join(map(str, codes))})",
                            transient=all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise MailError(f"SMTP server does not support this: {exc}", transient=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise MailError(f"SMTP server certificate rejected: {exc.verify_message}", transient=False) from None
        except (OSError, smtplib.SMTPException, socket.timeout) as exc:
            raise MailError(f"cannot talk to SMTP server {self.host}:{self.port}: {exc}", transient=True) from None


@functools.cache
def _default_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The system trust store (or SSL_CERT_FILE / SSL_CERT_DIR), read once per such setting."""
    return ssl.create_default_context()


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
