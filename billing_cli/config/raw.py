"""The configuration as text, before validation: each variable's value and where it came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .variables import VARIABLES

Source = Literal["env", ".env", "default"]


@dataclass(frozen=True)
class RawConfig:
    """What the environment and `.env` say, before validation: name -> (value, source)."""

    values: Mapping[str, tuple[str | None, Source]]
    env_file: Path
    under_kubernetes: bool
    env_file_problem: str | None = None  # BILLING_ENV_FILE names a file that cannot be read
    misspelt: tuple[tuple[str, str], ...] = ()  # (key in the file, the variable it resembles)

    def value(self, name: str) -> str | None:
        return self.values[name][0]


def read_raw_config(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> RawConfig:
    """Read every known variable: the real environment wins over `.env`, which wins over defaults.

    A missing `.env` is fine (everything can come from the environment); a missing file named by
    BILLING_ENV_FILE is a problem: the crontab keeps DATABASE_URL there, and a typo in its path
    must not run the jobs without it. `/dev/null` reads as an empty file."""
    environ = os.environ if environ is None else environ
    named = env_file is None and environ.get("BILLING_ENV_FILE", "") != ""
    if env_file is None:
        env_file = Path(environ["BILLING_ENV_FILE"]) if named else Path(".env")
    from_file, problem = _read_env_file(env_file, required=named)
    values: dict[str, tuple[str | None, Source]] = {}
    for var in VARIABLES:
        # An empty value counts as unset: `DRY_RUN=` in .env or an empty ConfigMap entry means the default.
        if environ.get(var.name, "") != "":
            values[var.name] = (environ[var.name], "env")
        elif from_file.get(var.name, "") != "":
            values[var.name] = (from_file[var.name], ".env")
        else:
            values[var.name] = (var.default, "default")
    return RawConfig(values, env_file, bool(environ.get("KUBERNETES_SERVICE_HOST")), problem, _misspelt(from_file))


def _misspelt(from_file: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The file's keys that are no variable but a typo of one (DRYRUN, INVOICE_ENABLE_STIPE: at most
    two letters off): ignored, they would turn a dry run into a real one, or leave a delivery off.
    Other tools' keys, even named after ours (TEST_DATABASE_URL, PGPASSWORD), stay allowed."""
    known = [var.name for var in VARIABLES] + ["BILLING_ENV_FILE"]
    found = []
    for key in from_file:
        if key in known or len(key) < 5:
            continue
        close = [name for name in known if _edits(key.upper(), name) <= 2]
        if close:
            found.append((key, min(close, key=lambda name: _edits(key.upper(), name))))
    return tuple(found)


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: letters inserted, deleted or replaced to turn `a` into `b`."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def _read_env_file(path: Path, *, required: bool) -> tuple[dict[str, str], str | None]:
    """The file's variables, and what is wrong with it when it is `required` (else: nothing)."""
    from dotenv import dotenv_values

    named = f"BILLING_ENV_FILE={str(path)!r}" if required else str(path)
    if path.is_file():
        try:
            return {k: v for k, v in dotenv_values(path).items() if v is not None}, None
        except OSError as exc:  # e.g. mode 0600 and another user
            return {}, f"{named}: cannot be read ({exc.strerror or exc}), so none of the settings it holds are read"
        except UnicodeDecodeError as exc:  # saved by an editor in Latin-1 or Windows-1252
            line = exc.object[:exc.start].count(b"\n") + 1
            return {}, (f"{named}: line {line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}), so none of "
                        "the settings it holds are read: save the file as UTF-8")
    if not required or (path.exists() and not path.is_dir()):
        return {}, None  # no .env, or a device such as /dev/null
    what = "is a directory" if path.is_dir() else "no such file"
    return {}, (f"{named}: {what}, so none of the settings it holds are read: fix the path, or unset "
                "BILLING_ENV_FILE to read .env")
