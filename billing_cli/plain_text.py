"""Rules for text from outside (plan and tax files, arguments, settings): what it may hold."""

from __future__ import annotations

import unicodedata


def has_control_character(value: str, *, allowed: str = "") -> bool:
    """Whether `value` holds a control character (C0 such as NUL or a line break, DEL, C1) other than
    those `allowed`. TOML strings may hold any; PostgreSQL's text cannot hold NUL (a database error
    mid-apply), and invoices have no use for the others."""
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value)


def holds_undecodable_bytes(value: str) -> bool:
    """Whether `value` carries bytes that were not UTF-8 (an argument or a setting typed in a Latin-1
    terminal): Python keeps them as lone surrogates (U+DC80-U+DCFF), which PostgreSQL, JSON and
    e-mail refuse."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)
