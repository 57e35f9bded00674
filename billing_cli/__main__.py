"""`python -m billing_cli` runs the same program as the `billing` console script."""

from .cli import main

if __name__ == "__main__":  # not when a PDF worker process (spawn) imports this module
    main()
