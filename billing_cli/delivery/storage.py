"""Invoice PDFs in S3 (or any S3-compatible store): private objects, presigned links.

The boto3 client is created on first use, inside the call, never at import or construction.
Credentials come from boto3's usual chain (environment, profile, IRSA web identity).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from typing import Protocol

from ..periods import Month

MAX_LINK_SECONDS = 7 * 24 * 3600  # S3's own ceiling for SigV4 presigned URLs


class StorageError(Exception):
    """An upload failed after boto3's retries (or was refused outright)."""


def object_key(prefix: str, month: Month, organization_id: str, number: str) -> str:
    """`invoices/YYYY/MM/<org_id>/<invoice_number>.pdf`, under an optional prefix."""
    key = f"invoices/{month.year:04d}/{month.month:02d}/{organization_id}/{number}.pdf"
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


class FileStore(Protocol):
    def put(self, key: str, data: bytes, *, invoice_number: str) -> None: ...

    def link(self, key: str) -> str: ...

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

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._s3 = None

    def _client(self):
        """One client for all worker threads: a boto3 client is thread-safe once built (building
        one is not, and costs ~100 ms of CPU loading the S3 service model), with a connection pool
        as large as the worker pool."""
        with self._lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                config = Config(retries={"mode": "standard", "max_attempts": self.max_attempts},
                                connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                                signature_version="s3v4", max_pool_connections=self.max_connections)
                self._s3 = boto3.session.Session().client("s3", region_name=self.region,
                                                          endpoint_url=self.endpoint_url, config=config)
            return self._s3

    def put(self, key: str, data: bytes, *, invoice_number: str) -> None:
        """Upload (or overwrite with the same bytes: the same key always holds the same invoice)."""
        from botocore.exceptions import BotoCoreError, ClientError

        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        try:
            self._client().put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/pdf",
                ServerSideEncryption="AES256", ChecksumSHA256=checksum,
                Metadata={"invoice-number": invoice_number},
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StorageError(f"S3 refused the upload to s3://{self.bucket}/{key}: "
                               f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()) from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 upload to s3://{self.bucket}/{key} failed: {exc}") from None

    def link(self, key: str) -> str:
        """A presigned GET URL that expires (the objects themselves stay private)."""
        return self._client().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=min(self.link_seconds, MAX_LINK_SECONDS))

    def sha256(self, key: str) -> str | None:
        """The SHA-256 (hex) of the object's bytes, read-only: the checksum S3 keeps when it has
        one, else computed from the bytes (stores that keep none); None if there is no such
        object. StorageError if S3 cannot be asked."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            checksum = head.get("ChecksumSHA256")
            if checksum and "-" not in checksum:  # a multipart object's checksum is of its parts
                return base64.b64decode(checksum).hex()
            body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return hashlib.sha256(body).hexdigest()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"S3 refused to describe s3://{self.bucket}/{key}: "
                               f"{exc.response.get('Error', {}).get('Code', '?')}") from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 cannot be reached to check s3://{self.bucket}/{key}: {exc}") from None
