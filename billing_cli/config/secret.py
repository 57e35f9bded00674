"""Secret values: never printed, and the masked forms `billing config` and error messages show."""

from __future__ import annotations

import re


class Secret:
    """A secret string: printing or repr-ing it (also in a traceback) never shows the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask_url_password(url: str) -> str:
    """`scheme://user:secret@host/db` -> `scheme://user:****@host/db` (also for unparsable URLs)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*):[^@]*@", r"\1:****@", url)
