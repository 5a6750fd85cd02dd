"""The ``mechedit`` command line (typer). Each sub-command lives in its own module of this package."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import typer

from mechedit.cli.common import set_debug

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("(")[0] if __doc__ else None,
                  pretty_exceptions_enable=False, rich_markup_mode=None)



@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="print full tracebacks instead of one-line errors")):
    """Options shared by every sub-command."""
    set_debug(debug)


# sub-command modules register themselves on ``app`` when imported
for _mod in ("models", "localize", "edit", "evaluate", "compare", "report", "demo"):
    if importlib.util.find_spec(f"mechedit.cli.{_mod}") is not None:
        importlib.import_module(f"mechedit.cli.{_mod}")


def main() -> None:
    """Entry point of the console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:  # outside a command's error boundary (e.g. while importing)
        print("interrupted, nothing written", file=sys.stderr)
        raise SystemExit(130) from None
