"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives, with AUTH and faults."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class MailServer:
    """`fail_next(n, code)` answers the next n DATA commands with that SMTP code (e.g. 451 or 554);
    `on_message` runs after a message is accepted (tests use it to kill a client at that moment)."""

    username: str = "mailer"
    password: str = "smtp-SECRET-pw"
    received: list[Received] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    on_message: Callable[[Received], None] | None = None
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, count: int, code: int = 451) -> None:
        with self._lock:
            self.failures.extend([code] * count)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd handler hook
        with self._lock:
            if self.failures:
                code = self.failures.pop(0)
                return f"{code} {'try again later' if code < 500 else 'rejected'}"
            parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
            item = Received(envelope.mail_from, list(envelope.rcpt_tos), parsed)  # type: ignore[arg-type]
            self.received.append(item)
        if self.on_message:
            self.on_message(item)
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.username \
            and auth_data.password.decode() == self.password
        return AuthResult(success=ok, handled=False)  # failure: let aiosmtpd answer 535

    def start(self) -> MailServer:
        self.port = self.port or free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, auth_required=True,
                                      auth_require_tls=False, authenticator=self._authenticate)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
