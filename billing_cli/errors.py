"""The BillingError family and the exit codes they map to (the one table of exit codes)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code the program uses. Documented in README.md; Kubernetes manifests rely on it.

    Codes 2, 3, 5, 8 and 11 are permanent (re-running the same command cannot help); 4, 6, 9 and
    12 are worth retrying; 7 means another run is busy with the same work; 1 is a bug.
    """

    OK = 0
    INTERNAL = 1  # an unexpected error: a bug, reported with a traceback (secrets never shown)
    USAGE = 2  # a bad flag or argument (also what Typer uses for its own usage errors)
    CONFIG = 3  # a bad or missing setting (environment / .env)
    DATABASE_UNAVAILABLE = 4  # PostgreSQL could not be reached or dropped the connection
    SCHEMA_OUTDATED = 5  # the database schema is behind: run `billing db upgrade`
    PARTIAL = 6  # the run finished but some organizations or hours failed; a rerun completes them
    ALREADY_RUNNING = 7  # another run of the same job holds the lock; nothing was touched
    REFUSED = 8  # the command refused to act on this data (e.g. demo on a non-demo database)
    INTERRUPTED = 9  # stopped by SIGTERM/SIGINT after finishing what was in flight; a rerun completes it
    UNHEALTHY = 10  # `billing status --check`: a job is late, failed or stuck
    MISMATCH = 11  # `billing reconcile`: events, roll-ups, invoices and the outside services disagree
    PEER_UNAVAILABLE = 12  # an outside service a check needs (Stripe, S3) could not be reached


class BillingError(Exception):
    """An expected failure with a one-line message for the operator and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(BillingError):
    exit_code = ExitCode.USAGE


class ConfigError(BillingError):
    exit_code = ExitCode.CONFIG


class DatabaseUnavailable(BillingError):
    exit_code = ExitCode.DATABASE_UNAVAILABLE


class SchemaOutdated(BillingError):
    exit_code = ExitCode.SCHEMA_OUTDATED


class AlreadyRunning(BillingError):
    exit_code = ExitCode.ALREADY_RUNNING


class Refused(BillingError):
    exit_code = ExitCode.REFUSED


class LockLost(DatabaseUnavailable):
    """The run's lock went with its database session: it stops before taking more work (exit 4)."""


class PeerUnavailable(BillingError):
    exit_code = ExitCode.PEER_UNAVAILABLE
