"""`python -m billing_cli.config` (in the checkout): rewrite .env.example and README.md's tables from
VARIABLES and EXIT_CODES."""

from __future__ import annotations

from pathlib import Path

from .docs import env_example, with_readme_table


def main(root: Path) -> None:
    readme = root / "README.md"
    for path, text in ((root / ".env.example", env_example()),
                       (readme, with_readme_table(readme.read_text(encoding="utf-8")))):
        changed = not path.is_file() or path.read_text(encoding="utf-8") != text
        if changed:
            path.write_text(text, encoding="utf-8")
        print(f"{path}: {'rewritten' if changed else 'up to date'}")


if __name__ == "__main__":
    main(Path.cwd())
