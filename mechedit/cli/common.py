"""Shared CLI helpers: turning library errors into one-line messages and a non-zero exit."""

from __future__ import annotations

import contextlib
import sys

import typer
from rich.console import Console

from mechedit.cache import CacheError
from mechedit.facts import FactError
from mechedit.models import ModelNotAvailable

# wide enough for the comparison table when output goes to a file or CI log (rich defaults to 80 there)
console = Console(width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors():
    """Print FactError / ModelNotAvailable / CacheError / ValueError as one red line and exit with status 2."""
    try:
        yield
    except (FactError, ModelNotAvailable, CacheError, ValueError, FileNotFoundError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
