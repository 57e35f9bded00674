"""Text the plans and taxes files give to invoices: what a name or a description may hold."""

from __future__ import annotations

import unicodedata


def has_control_character(value: str, *, allowed: str = "") -> bool:
    """Whether `value` holds a control character (C0 such as NUL or a line break, DEL, C1) other than
    those `allowed`. TOML strings may hold any; PostgreSQL's text cannot hold NUL (a database error
    mid-apply), and invoices have no use for the others."""
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value)
