"""`python -m billing_cli` runs the same program as the `billing` console script."""

from .cli import main

main()
