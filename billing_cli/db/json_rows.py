"""Many rows as one statement parameter: a JSON array of objects, read back in SQL by
`json_to_recordset(CAST(:rows AS json)) AS r(column type, ...)`.

Why not one array per column (`unnest(CAST(:a AS numeric[]), ...)`): psycopg dumps every array
element in Python, escaping each string with a regular expression; a GIL profile of a loaded
machine put an issuing block's forty arrays at half of the real run's extra Python over the dry run
(on a quiet machine the run's time did not measurably change: docs/benchmarks.md). `json.dumps`
does the same in C, and a table's rows are one parameter. Values stay exact: a Decimal travels as its
string ("12.345") and PostgreSQL's numeric input reads it as written; dates and timestamps as ISO
8601 strings; a nested dict or list reaches a json/jsonb or array column as itself."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal


def json_rows(rows: Iterable[Mapping[str, object]]) -> str:
    """The rows as the JSON text json_to_recordset reads (keys = the record's column names)."""
    return json.dumps(list(rows), default=_exact, ensure_ascii=False, separators=(",", ":"))


def _exact(value: object) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite amount: {value}")
        return str(value)
    if isinstance(value, date):  # datetime too: an aware timestamp keeps its offset
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as a JSON row value")
