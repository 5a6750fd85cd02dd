"""Checks of user input made before any model is loaded, size limits, and atomic writing of outputs.

Everything here raises ``ValueError`` (or ``FactError``) with a one-line message naming the culprit (a file and
line, an option, a path), so that a bad input stops a command before it loads a model or trains, and an error or
Ctrl-C never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mechedit.facts import FactError

# ---------------------------------------------------------------------- numeric options


def check_count(option: str, value: int | None, minimum: int = 1) -> None:
    """Refuse an integer option below ``minimum`` (None means "use the default" and passes)."""
    if value is not None and value < minimum:
        raise ValueError(f"{option} must be at least {minimum}, got {value}")


def check_rate(option: str, value: float | None, allow_zero: bool = False) -> None:
    """Refuse a non-finite, negative (or, unless allowed, zero) float option."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{option} must be a finite number {'≥' if allow_zero else '>'} 0, got {value}")


# ---------------------------------------------------------------------- input and output paths


def check_input_file(path: Path, option: str) -> None:
    """An existing, readable regular file."""
    if not path.exists():
        raise FileNotFoundError(f"{option} {path}: no such file")
    if not path.is_file():
        raise ValueError(f"{option} {path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{option} {path}: not readable (permission denied)")


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    return p


def check_output(path: Path, option: str, force: bool, kind: str = "file") -> None:
    """Refuse an output that exists (unless ``force``), has the wrong kind, or cannot be written.

    ``kind`` is "file" or "dir". Missing parent directories are fine (created when the output is written) as long
    as the nearest existing ancestor is a writable directory.
    """
    if path.exists() or path.is_symlink():
        if kind == "file" and path.is_dir():
            raise ValueError(f"{option} {path}: is a directory, expected a file path")
        if kind == "dir" and not path.is_dir():
            raise ValueError(f"{option} {path}: is a file, expected a directory path")
        if not force:
            raise ValueError(f"{option} {path} already exists; pass --force to replace it")
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise ValueError(f"{option} {path}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: cannot write in {anc} (permission denied)")


def check_distinct(paths: dict[str, Path]) -> None:
    """Refuse two outputs (or an output and an input) that are the same file."""
    seen: dict[Path, str] = {}
    for option, p in paths.items():
        key = p.absolute()
        if key in seen:
            raise ValueError(f"{option} and {seen[key]} are the same path {p}")
        seen[key] = option


# ---------------------------------------------------------------------- atomic writing


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of ``path``; return them (outermost first) so a failure can remove them."""
    missing = []
    p = path.absolute().parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_dirs(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


class StagedFiles:
    """Files written to temporary names next to their destination and moved into place together at the end.

    ``stage(path)`` returns the temporary path to write; ``commit()`` renames every staged file onto its
    destination (``os.replace``, atomic per file); ``discard()`` removes them. Use ``staged_files()``.
    """

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []
        self.created_dirs: list[Path] = []

    def stage(self, path: str | Path) -> Path:
        """A temporary path in ``path``'s directory (created if missing) that becomes ``path`` on commit."""
        path = Path(path)
        self.created_dirs += _make_parents(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
        self.staged.append((Path(tmp), path))
        return Path(tmp)

    def write_text(self, path: str | Path, text: str) -> None:
        """Stage ``text`` for ``path``."""
        self.stage(path).write_text(text)

    def commit(self) -> None:
        """Move every staged file into place."""
        for tmp, dest in self.staged:
            os.replace(tmp, dest)
        self.staged = []
        self.created_dirs = []

    def discard(self) -> None:
        """Remove the staged files (and directories created for them)."""
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.staged = []
        _remove_dirs(self.created_dirs)
        self.created_dirs = []


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """Stage outputs; commit them all if the block succeeds, remove them if it raises (or is interrupted)."""
    st = StagedFiles()
    try:
        yield st
    except BaseException:
        st.discard()
        raise
    st.commit()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    with staged_files() as st:
        st.write_text(path, text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds (removed if it fails).

    An existing ``path`` is replaced only when ``replace`` is true (it is moved aside, the new directory is
    renamed in, then the old one is deleted).
    """
    path = Path(path)
    created = _make_parents(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent))
    os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would, not mkdtemp's 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise
    if path.exists() or path.is_symlink():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{path} already exists")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.absolute().parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        if (old / "x").is_dir() and not (old / "x").is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            (old / "x").unlink()
            old.rmdir()
    else:
        os.replace(tmp, path)


# ---------------------------------------------------------------------- reading user files


def read_json(path: str | Path, what: str = "JSON file"):
    """Parse a JSON file; errors name the file and the real line and column."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory, expected a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{_line_of_byte(path, exc.start)}: not UTF-8 text ({what})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid {what} (column {exc.colno}: {exc.msg})") from None


def _line_of_byte(path: Path, offset: int) -> int:
    return path.read_bytes()[:offset].count(b"\n") + 1


def require_keys(d, keys: tuple[str, ...], where: str) -> None:
    """Refuse a parsed JSON value that is not an object holding ``keys``."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


# ---------------------------------------------------------------------- size limits


@dataclass(frozen=True)
class SizeLimits:
    """Longest texts a fact may hold, in tokens (and in characters, checked before any tokenizer is loaded).

    A rendered prompt (prompt, paraphrase or question with the subject filled in) may have at most
    ``prompt_tokens`` tokens (and never more than the model's context); an answer, target or candidate at most
    ``answer_tokens``. The character limits are ``chars_per_token`` times the token limits. Override with the
    environment variables ``MECHEDIT_MAX_PROMPT_TOKENS`` / ``MECHEDIT_MAX_ANSWER_TOKENS``.
    """

    prompt_tokens: int = 256
    answer_tokens: int = 32
    chars_per_token: int = 16

    @classmethod
    def from_env(cls) -> SizeLimits:
        """Defaults, overridden by the environment variables."""
        kw = {}
        for field_, var in (("prompt_tokens", "MECHEDIT_MAX_PROMPT_TOKENS"),
                            ("answer_tokens", "MECHEDIT_MAX_ANSWER_TOKENS")):
            raw = os.environ.get(var)
            if raw:
                try:
                    kw[field_] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not an integer") from None
                check_count(var, kw[field_])
        return cls(**kw)


def _fact_texts(f) -> Iterator[tuple[str, str, bool]]:
    """(what, text, is_prompt) for every user-given text of a fact."""
    yield "subject", f.subject, True
    yield "prompt", f.render(), True
    for p in f.paraphrases:
        yield "paraphrase", f.render(p), True
    if f.question:
        yield "question", f.render(f.question), True
    for p in f.neighborhood:
        yield "neighborhood prompt", p, True
    yield "answer", f.answer, False
    if f.target:
        yield "target", f.target, False
    for c in f.candidates:
        yield "candidate", c, False


def where(f) -> str:
    """Where a fact came from (file:line), or its subject when it has no origin."""
    return f.origin or f"fact about {f.subject[:40]!r}"


def check_fact_sizes(facts, tokenizer=None, limits: SizeLimits | None = None, context: int | None = None) -> None:
    """Refuse (naming file:line) any fact text over the size limits; characters only when ``tokenizer`` is None.

    ``context`` (the model's maximum positions) lowers the prompt limit when it is smaller. Characters are checked
    first, so a huge text is refused before it is ever tokenized (flat memory, milliseconds).
    """
    limits = limits or SizeLimits.from_env()
    p_tok = min(limits.prompt_tokens, context) if context else limits.prompt_tokens
    entries = []
    for f in facts:
        for what, text, is_prompt in _fact_texts(f):
            char_limit = (limits.prompt_tokens if is_prompt else limits.answer_tokens) * limits.chars_per_token
            if len(text) > char_limit:
                raise FactError(f"{where(f)}: {what} is {len(text):,} characters long; the limit is "
                                f"{char_limit:,} ({limits.chars_per_token} per token of the "
                                f"{limits.prompt_tokens if is_prompt else limits.answer_tokens}-token limit)")
            entries.append((f, what, text, is_prompt))
    if tokenizer is None:
        return
    for start in range(0, len(entries), 1024):
        chunk = entries[start:start + 1024]
        ids = tokenizer([e[2] for e in chunk], add_special_tokens=False)["input_ids"]
        for (f, what, _, is_prompt), row in zip(chunk, ids, strict=True):
            tok_limit = p_tok if is_prompt else limits.answer_tokens
            if len(row) > tok_limit:
                why = ("the model's context" if is_prompt and tok_limit == context and context < limits.prompt_tokens
                       else f"MECHEDIT_MAX_{'PROMPT' if is_prompt else 'ANSWER'}_TOKENS")
                raise FactError(f"{where(f)}: {what} is {len(row):,} tokens long; the limit is {tok_limit} ({why})")


def check_choice(option: str, what: str, values: str | Sequence[str], choices: Collection[str]) -> None:
    """Refuse any value outside ``choices``: one line naming the option, the value(s) and the valid choices."""
    given = [values] if isinstance(values, str) else list(values)
    unknown = [v for v in given if v not in choices]
    if unknown:
        shown = repr(unknown[0]) if isinstance(values, str) else ", ".join(unknown)
        raise ValueError(f"{option}: unknown {what}{'' if isinstance(values, str) else '(s)'} {shown}; "
                         f"choose from {', '.join(choices)}")
