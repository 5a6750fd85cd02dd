"""Shared CLI helpers: the error boundary (one line per failure), output checks and validated input loading."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from safetensors import SafetensorError

from mechedit.cache import CacheError
from mechedit.components import n_params
from mechedit.edit.config import EditError
from mechedit.facts import BUNDLED_FACTSETS, FactError, FactSet, load_facts
from mechedit.localize.localization import Localization
from mechedit.models import ModelNotAvailable, fingerprint
from mechedit.validate import check_fact_sizes, check_input_file

# wide enough for the comparison table when output goes to a file or CI log (rich defaults to 80 there)
console = Console(width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, width=10_000)  # never wrap an error line

EXIT_USER = 2
EXIT_BUG = 1
EXIT_INTERRUPT = 130
FORCE_HELP = "replace an existing output (otherwise the command refuses to overwrite it)"
DEVICE_HELP = "torch device to run on: cpu, cuda, cuda:N or mps (it must exist here)"
DTYPE_HELP = "float32, bfloat16 or float16 (float16 only on a GPU); probes and metrics are computed in float32"


def device_option():
    """The ``--device`` option every command that loads a model takes (one definition)."""
    return typer.Option("cpu", "--device", help=DEVICE_HELP)


def dtype_option():
    """The ``--dtype`` option every command that loads a model takes (one definition)."""
    return typer.Option("float32", "--dtype", help=DTYPE_HELP)
_state = {"debug": False}


def set_debug(on: bool) -> None:
    """Show full tracebacks instead of one-line errors (``mechedit --debug`` or MECHEDIT_DEBUG=1)."""
    _state["debug"] = on


def debugging() -> bool:
    """Whether full tracebacks are wanted."""
    return _state["debug"] or os.environ.get("MECHEDIT_DEBUG", "") not in ("", "0")


def _expected() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or environment (one line, exit 2), not a bug."""
    kinds: list[type[BaseException]] = [FactError, ModelNotAvailable, CacheError, ValueError, OSError, csv.Error]
    kinds.append(SafetensorError)
    with contextlib.suppress(ImportError):
        kinds.append(EditError)
    return tuple(kinds)


def one_line(exc: BaseException) -> str:
    """A single-line message for an expected failure, naming the file where the exception knows it."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
        cache = os.environ.get("MECHEDIT_CACHE")
        if cache and Path(str(exc.filename)).expanduser() == Path(cache).expanduser():
            msg = f"MECHEDIT_CACHE={exc.filename}: {exc.strerror} (it must be a writable directory)"
    elif isinstance(exc, json.JSONDecodeError):
        msg = f"invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def _write_traceback() -> str | None:
    """Write the current traceback to a temporary file; return its path (None if that fails too)."""
    try:
        fd, path = tempfile.mkstemp(prefix="mechedit-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(traceback.format_exc())
        return path
    except OSError:
        return None


@contextlib.contextmanager
def user_errors():
    """The CLI's error boundary.

    Bad input or environment (FactError, ValueError, OSError, CSV/JSON/safetensors errors, EditError,
    ModelNotAvailable, CacheError) → one red line, exit 2. Any other exception → one line plus where the full traceback
    was written, exit 1. Ctrl-C → "interrupted, nothing written", exit 130. ``--debug`` re-raises instead.
    """
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted, nothing written[/]")
        raise typer.Exit(EXIT_INTERRUPT) from None
    except _expected() as exc:
        if debugging():
            raise
        err_console.print(f"[bold red]error:[/] {escape(one_line(exc))}")
        raise typer.Exit(EXIT_USER) from None
    except Exception as exc:
        if debugging():
            raise
        where = _write_traceback()
        err_console.print(f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(one_line(exc))}"
                          f" (traceback in {where or '?'}; rerun with --debug to print it)")
        raise typer.Exit(EXIT_BUG) from None


# ---------------------------------------------------------------------- inputs


def is_bundled(spec: str) -> bool:
    """Whether a FACTS argument names a bundled fact set."""
    return spec in BUNDLED_FACTSETS


def read_facts(spec: str) -> FactSet:
    """Load FACTS and check its texts' sizes in characters (before any model is loaded)."""
    fs = load_facts(spec)
    if not is_bundled(spec):
        check_fact_sizes(fs)
    return fs


def read_localization(path: Path, option: str):
    """Load a loc.json given as ``option``, with errors naming the file."""
    check_input_file(path, option)
    return Localization.load(path)


def check_localization_fits(loc, model, path: Path, option: str) -> None:
    """Refuse a localization made on another model (fingerprint, or its components' shapes/parameter count)."""
    recorded = loc.extra.get("model_fingerprint")
    if recorded and recorded != fingerprint(model):
        raise ValueError(f"{option} {path} was made on another model (fingerprint {recorded}; this model has "
                         f"{fingerprint(model)}); localize on this model first")
    try:
        count = n_params(model, loc.components)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{option} {path} does not fit this model ({one_line(exc)})") from None
    if loc.n_params and count != loc.n_params:
        raise ValueError(f"{option} {path} was made on another model: its components own {loc.n_params:,} "
                         f"parameters there and {count:,} here")


def print_notes(fs: FactSet, limit: int = 3) -> None:
    """Show what loading dropped (bundled sets drop facts whose candidates collide), with a count."""
    if not fs.notes:
        return
    for note in fs.notes[:limit]:
        console.print(f"[dim]{escape(note)}[/]")
    dropped = sum(n.startswith("dropped") for n in fs.notes)
    if len(fs.notes) > limit or dropped:
        console.print(f"[dim]{len(fs.notes)} note(s); {dropped} fact(s) dropped because their candidates share a "
                      f"first token[/]")
