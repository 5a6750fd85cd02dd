"""The ``mechedit`` command line (typer). Each sub-command lives in its own module of this package."""

from __future__ import annotations

import importlib
import importlib.util
import logging

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("(")[0] if __doc__ else None,
                  pretty_exceptions_enable=False)

# sub-command modules register themselves on ``app`` when imported
for _mod in ("models", "localize", "edit", "evaluate", "compare", "report", "demo"):
    if importlib.util.find_spec(f"mechedit.cli.{_mod}") is not None:
        importlib.import_module(f"mechedit.cli.{_mod}")


def main() -> None:
    """Entry point of the console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
