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

    def value(self, name: str) -> str | None:
        return self.values[name][0]


def read_raw_config(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> RawConfig:
    """Read every known variable: the real environment wins over `.env`, which wins over defaults."""
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    env_file = Path(environ.get("BILLING_ENV_FILE", ".env")) if env_file is None else env_file
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}
    values: dict[str, tuple[str | None, Source]] = {}
    for var in VARIABLES:
        # An empty value counts as unset: `DRY_RUN=` in .env or an empty ConfigMap entry means the default.
        if environ.get(var.name, "") != "":
            values[var.name] = (environ[var.name], "env")
        elif from_file.get(var.name, "") != "":
            values[var.name] = (from_file[var.name], ".env")
        else:
            values[var.name] = (var.default, "default")
    return RawConfig(values, env_file, bool(environ.get("KUBERNETES_SERVICE_HOST")))
