"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives, with AUTH and faults."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
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
    peer: tuple[str, int] = ("", 0)  # the client's address and port: one per SMTP session


@dataclass
class MailServer:
    """`fail_next(n, code)` answers the next n DATA commands with that SMTP code (e.g. 451 or 554);
    `on_message` runs after a message is accepted (tests use it to kill a client at that moment).
    `quits` counts the sessions that ended with QUIT."""

    username: str = "mailer"
    password: str = "smtp-SECRET-pw"
    received: list[Received] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    on_message: Callable[[Received], None] | None = None
    port: int = 0
    tls: str | None = None  # None (plain), "starttls" or "ssl" (implicit TLS)
    cert_file: str | None = None
    key_file: str | None = None
    quits: int = 0
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
            item = Received(envelope.mail_from, list(envelope.rcpt_tos), parsed,  # type: ignore[arg-type]
                            tuple(session.peer))
            self.received.append(item)
        if self.on_message:
            self.on_message(item)
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope) -> str:  # aiosmtpd handler hook
        with self._lock:
            self.quits += 1
        return "221 Bye"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.username \
            and auth_data.password.decode() == self.password
        return AuthResult(success=ok, handled=False)  # failure: let aiosmtpd answer 535

    def start(self) -> MailServer:
        self.port = self.port or free_port()
        options: dict = {}
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_file, self.key_file)  # type: ignore[arg-type]
            options = {"tls_context": context, "require_starttls": True} if self.tls == "starttls" \
                else {"ssl_context": context}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, auth_required=True,
                                      auth_require_tls=False, authenticator=self._authenticate, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (subjectAltName IP), and its key: (cert_file, key_file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = f"{directory}/smtp-cert.pem", f"{directory}/smtp-key.pem"
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file
