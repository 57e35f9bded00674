"""The documentation made from VARIABLES and EXIT_CODES: `.env.example` and README.md's tables of
settings and exit codes."""

from __future__ import annotations

from ..errors import EXIT_CODES
from .variables import VARIABLES

README_TABLE_HEADER = "| Variable | Default | Meaning |"
EXIT_CODES_TABLE_HEADER = "| Code | Name | Meaning | Retry? |"


def env_example() -> str:
    """The documented `.env.example`: every variable, its meaning and default (`billing config --example`)."""
    lines = ["# billing configuration. Copy to .env and edit; real environment variables win over this file.",
             "# Booleans: true/false, 1/0, yes/no (any case). Secrets are masked by `billing config`.", ""]
    for var in VARIABLES:
        lines.append(f"# {var.help}" + (" (secret)" if var.secret else ""))
        if var.default is None:
            lines.append(f"# {var.name}={var.example or ''}")
        else:
            lines.append(f'{var.name}="{var.default}"' if " " in var.default else f"{var.name}={var.default}")
        lines.append("")
    return "\n".join(lines)


def readme_table() -> str:
    """README.md's table of variables (Markdown, GitHub flavour), ending with a newline."""
    rows = [README_TABLE_HEADER, "|---|---|---|"]
    for var in VARIABLES:
        default = "—" if var.default is None else _markdown(f"`{var.default}`")
        meaning = _markdown(var.help) + (" **Secret**: masked everywhere." if var.secret else "")
        rows.append(f"| `{var.name}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def exit_codes_table() -> str:
    """README.md's table of exit codes (the text `billing exit-codes` prints), ending with a newline."""
    rows = [EXIT_CODES_TABLE_HEADER, "|---|---|---|---|"]
    for doc in EXIT_CODES:
        name = f"`{doc.name}`" if doc.name else "—"
        rows.append(f"| {doc.code} | {name} | {_markdown(doc.meaning)} | {_markdown(doc.retry)} |")
    return "\n".join(rows) + "\n"


def with_readme_table(readme: str) -> str:
    """`readme` with its tables of variables and of exit codes (each from the header row to the last
    row) replaced by readme_table() and exit_codes_table()."""
    for header, table in ((README_TABLE_HEADER, readme_table()), (EXIT_CODES_TABLE_HEADER, exit_codes_table())):
        lines = readme.splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == header]
        if len(starts) != 1:
            raise ValueError(f"README.md must have exactly one line {header!r}, not {len(starts)}")
        end = starts[0]
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        readme = "".join(lines[:starts[0]]) + table + "".join(lines[end:])
    return readme


def _markdown(text: str) -> str:
    # In a GitHub table `|` ends the cell, even inside `code`; outside code, `<dir>` would be taken
    # for an HTML tag and not shown at all.
    parts = text.split("`")  # odd parts are code
    text = "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))
    return text.replace("|", "\\|")
