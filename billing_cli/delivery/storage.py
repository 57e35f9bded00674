"""Invoice PDFs in S3 (or any S3-compatible store): private objects, presigned links.

The boto3 client is created on first use, inside the call, never at import or construction.
Credentials come from boto3's usual chain (environment, profile, IRSA web identity).

A presigned link stops working when the credentials that signed it expire, whatever its
X-Amz-Expires says: temporary credentials (IRSA, an assumed role, SSO) last hours. So a link is
offered only when the credentials outlive the whole configured lifetime, and the e-mail states
that lifetime; otherwise there is no link (the PDF is attached, Stripe's page linked).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ..periods import Month
from .breaker import CircuitBreaker, CircuitOpen
from .retries import retrying

MAX_LINK_SECONDS = 7 * 24 * 3600  # S3's own ceiling for SigV4 presigned URLs


class StorageError(Exception):
    """An upload failed after the retries (or was refused outright)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# S3 error codes worth retrying (throttling and the service's own failures), as boto3's
# "standard" retry mode has them.
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


def object_key(prefix: str, month: Month, organization_id: str, number: str) -> str:
    """`invoices/YYYY/MM/<org_id>/<invoice_number>.pdf`, under an optional prefix."""
    key = f"invoices/{month.year:04d}/{month.month:02d}/{organization_id}/{number}.pdf"
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


@dataclass(frozen=True)
class PresignedLink:
    url: str
    expires_at: datetime  # the credentials that signed it last at least this long


class FileStore(Protocol):
    def put(self, key: str, data: bytes, *, invoice_number: str) -> None: ...

    def link(self, key: str) -> PresignedLink | None: ...

    def sha256(self, key: str) -> str | None: ...


@dataclass
class S3Store:
    bucket: str
    region: str
    endpoint_url: str | None = None
    link_seconds: int = MAX_LINK_SECONDS
    max_attempts: int = 5
    timeout_seconds: float = 30.0
    max_connections: int = 10  # botocore's default; the job sets its concurrency
    max_retry_seconds: float = 60.0  # all attempts of one call
    breaker_failures: int = 5
    stopping: threading.Event | None = None  # the run's SIGTERM: no new attempt once set (retries.py)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._s3 = None
        self._session = None
        self.breaker = CircuitBreaker("S3", failures=self.breaker_failures,
                                      is_transient=lambda exc: isinstance(exc, StorageError) and exc.transient)

    def _call(self, action):
        """One S3 call: retried with backoff while transient, within max_attempts and
        max_retry_seconds in all and until the run is told to stop, through the run's circuit breaker."""
        policy = retrying(lambda exc: isinstance(exc, StorageError) and exc.transient, attempts=self.max_attempts,
                          seconds=self.max_retry_seconds, multiplier=0.2, longest=5, stopping=self.stopping)
        try:
            return self.breaker.call(lambda: policy(action))
        except CircuitOpen as exc:
            raise StorageError(str(exc), transient=True) from None

    def _client(self):
        """One client for all worker threads: a boto3 client is thread-safe once built (building
        one is not, and costs ~100 ms of CPU loading the S3 service model), with a connection pool
        as large as the worker pool."""
        with self._lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                # Retried by _call (within the time budget), not inside botocore.
                config = Config(retries={"mode": "standard", "max_attempts": 1},
                                connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                                signature_version="s3v4", max_pool_connections=self.max_connections)
                self._session = boto3.session.Session()
                self._s3 = self._session.client("s3", region_name=self.region,
                                                endpoint_url=self.endpoint_url, config=config)
            return self._s3

    def put(self, key: str, data: bytes, *, invoice_number: str) -> None:
        """Upload (or overwrite with the same bytes: the same key always holds the same invoice)."""
        from botocore.exceptions import BotoCoreError, ClientError

        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()

        def upload() -> None:
            try:
                self._client().put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentType="application/pdf",
                    ServerSideEncryption="AES256", ChecksumSHA256=checksum,
                    Metadata={"invoice-number": invoice_number},
                )
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", "?"))
                raise StorageError(f"S3 refused the upload to s3://{self.bucket}/{key}: "
                                   f"{code} {error.get('Message', '')}".rstrip(),
                                   transient=code in _TRANSIENT_CODES) from None
            except BotoCoreError as exc:
                raise StorageError(f"S3 upload to s3://{self.bucket}/{key} failed: {exc}", transient=True) from None

        self._call(upload)

    def link(self, key: str) -> PresignedLink | None:
        """A presigned GET URL valid for `link_seconds` (the objects themselves stay private), or
        None when the credentials cannot keep it that long: temporary credentials whose expiry is
        sooner, or unknown."""
        from botocore.exceptions import BotoCoreError

        client = self._client()
        assert self._session is not None
        try:
            credentials = self._session.get_credentials()
            if credentials is None:
                return None
            frozen = credentials.get_frozen_credentials()  # refreshes credentials about to expire first
        except BotoCoreError as exc:
            raise StorageError(f"S3 credentials for a download link: {exc}", transient=True) from None
        now = datetime.now(UTC).replace(microsecond=0)
        seconds = min(self.link_seconds, MAX_LINK_SECONDS)
        expires_at = now + timedelta(seconds=seconds)
        if frozen.token:  # temporary credentials: the link dies with them
            credentials_expire = getattr(credentials, "_expiry_time", None)  # botocore keeps no public name for it
            if credentials_expire is None or credentials_expire.astimezone(UTC) < expires_at:
                return None
        url = client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                            ExpiresIn=seconds)
        return PresignedLink(url, expires_at)

    def sha256(self, key: str) -> str | None:
        """The SHA-256 (hex) of the object's bytes, read-only: the checksum S3 keeps when it has
        one, else computed from the bytes (stores that keep none); None if there is no such
        object. StorageError if S3 cannot be asked."""
        from botocore.exceptions import BotoCoreError, ClientError

        def read() -> str | None:
            try:
                head = self._client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
                checksum = head.get("ChecksumSHA256")
                if checksum and "-" not in checksum:  # a multipart object's checksum is of its parts
                    return base64.b64decode(checksum).hex()
                body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
                return hashlib.sha256(body).hexdigest()
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "?"))
                if code in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise StorageError(f"S3 refused to describe s3://{self.bucket}/{key}: {code}",
                                   transient=code in _TRANSIENT_CODES) from None
            except BotoCoreError as exc:
                raise StorageError(f"S3 cannot be reached to check s3://{self.bucket}/{key}: {exc}",
                                   transient=True) from None

        return self._call(read)
