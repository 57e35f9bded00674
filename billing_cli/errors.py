"""The BillingError family and the exit codes they map to (the one table of exit codes, with the
meaning `billing exit-codes`, `billing --help` and README.md show)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code the program uses; their meanings are EXIT_CODES below. Kubernetes manifests rely on it.

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


# Ctrl-C (SIGINT) before a job could stop cleanly: the shell's convention (128 + 2), not a code of ours.
KEYBOARD_INTERRUPT = 130


@dataclass(frozen=True)
class ExitCodeDoc:
    """One exit code as an operator reads it: `billing exit-codes` and README.md's table."""

    code: int
    name: str | None  # the ExitCode member; None for the shell's 130
    meaning: str
    retry: str  # whether running the same command again can help

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "name": self.name, "meaning": self.meaning, "retry": self.retry}


_MEANINGS: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("Everything succeeded.", "—"),
    ExitCode.INTERNAL: ("An unexpected error (a bug); a traceback is printed, without local variables or secrets.",
                        "investigate"),
    ExitCode.USAGE: ("A bad flag or argument (e.g. `--hour 2024-13-01T10`, `--from` after `--to`), or an invalid "
                     "plans file.", "no: fix the command"),
    ExitCode.CONFIG: ("A bad or missing setting (names the variable and value, secrets masked).",
                      "no: fix the configuration"),
    ExitCode.DATABASE_UNAVAILABLE: ("PostgreSQL could not be reached or dropped the connection (host and port "
                                    "shown, never the password).", "yes"),
    ExitCode.SCHEMA_OUTDATED: ("The schema is behind this program: run `billing db upgrade`.", "no: migrate first"),
    ExitCode.PARTIAL: ("The run finished, but some hours/organizations failed; the rest is done and a rerun "
                       "completes the failures.", "yes"),
    ExitCode.ALREADY_RUNNING: ("Another run of the same job holds the lock; nothing was touched.", "yes, later"),
    ExitCode.REFUSED: ("The command refused to act on this data (e.g. `billing demo` on a database with real "
                       "organizations).", "no"),
    ExitCode.INTERRUPTED: ("Stopped by SIGTERM/SIGINT after finishing the organizations in flight; a rerun "
                           "completes the rest.", "yes"),
    ExitCode.UNHEALTHY: ("`billing status --check`: a job's last success is too old, or its last run failed or "
                         "is stuck.", "—"),
    ExitCode.MISMATCH: ("`billing reconcile`: events, roll-ups, invoices, Stripe, S3 or e-mail disagree; each "
                        "difference says what to do.", "no: look at the data"),
    ExitCode.PEER_UNAVAILABLE: ("A service a check needs (Stripe, S3) could not be reached: nothing is known "
                                "about it yet.", "yes"),
}
if set(_MEANINGS) != set(ExitCode):  # a new code is documented where it is defined, or nothing starts
    raise RuntimeError(f"exit codes without a meaning: {sorted(set(ExitCode) - set(_MEANINGS))}")

EXIT_CODES: tuple[ExitCodeDoc, ...] = (
    *(ExitCodeDoc(int(code), code.name, *_MEANINGS[code]) for code in ExitCode),
    ExitCodeDoc(KEYBOARD_INTERRUPT, None, "Interrupted by Ctrl-C.", "yes"),
)


def exit_codes_summary() -> str:
    """One line of every code and its name, for the epilog of `billing --help`."""
    return ", ".join(f"{doc.code} {doc.name or 'Ctrl-C'}" for doc in EXIT_CODES)


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
