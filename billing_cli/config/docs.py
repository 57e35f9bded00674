"""The documentation made from VARIABLES: `.env.example` and README.md's configuration table."""

from __future__ import annotations

from .variables import VARIABLES

README_TABLE_HEADER = "| Variable | Default | Meaning |"


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


def with_readme_table(readme: str) -> str:
    """`readme` with its table of variables (from the header row to the last row) replaced by readme_table()."""
    lines = readme.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == README_TABLE_HEADER]
    if len(starts) != 1:
        raise ValueError(f"README.md must have exactly one line {README_TABLE_HEADER!r}, not {len(starts)}")
    end = starts[0]
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:starts[0]]) + readme_table() + "".join(lines[end:])


def _markdown(text: str) -> str:
    # In a GitHub table `|` ends the cell, even inside `code`; outside code, `<dir>` would be taken
    # for an HTML tag and not shown at all.
    parts = text.split("`")  # odd parts are code
    text = "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))
    return text.replace("|", "\\|")
