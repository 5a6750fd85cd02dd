"""Model caches (dequantized SmolLM2, trained factworld): where they live, how they are built, checked and loaded.

A cache is a directory holding a Hugging Face checkpoint + tokenizer and a completion marker ``COMPLETE`` that
records what the directory holds: every file with its size, the sha256 of the weight files, the torch and
transformers versions that wrote it and the builder's metadata. Builds go to a hidden sibling directory that is
renamed into place when complete, under a file lock, so concurrent processes never see or write a half-built
cache: the second one waits for the first and then loads its result.

Only a *verified* mismatch with the record (a missing or resized file, a wrong hash, an unreadable marker, a
truncated safetensors file) counts as corruption; such a cache is moved aside (``<dir>.corrupt-<time>``, never
deleted) and rebuilt. Any other load failure (an import error, a full disk, a permission problem) leaves the
cache untouched and is raised as a one-line :class:`CacheError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
RECORD_FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Weight files up to this total size are hashed on every load (factworld: ~60 KB, microseconds); larger ones
# (SmolLM2: 538 MB, ~1.2-1.7 s) only at build time, on `mechedit models --verify` and when a load goes wrong.
HASH_ON_LOAD_MAX_BYTES = 64 * 2**20
_ASIDE = ".corrupt-"


class CacheError(RuntimeError):
    """A cache could not be loaded or built for a reason that is not corruption of the cache itself."""


def cache_dir() -> Path:
    """Return the user cache directory (``$MECHEDIT_CACHE`` or ``~/.cache/mechedit``), creating it."""
    root = Path(os.environ.get("MECHEDIT_CACHE", Path.home() / ".cache" / "mechedit")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---------------------------------------------------------------- records


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 16 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def make_record(directory: Path, meta: dict) -> dict:
    """Describe a finished cache directory: file sizes, weight hashes, library versions, build metadata."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER}
    return {
        "format": RECORD_FORMAT,
        "files": files,
        "sha256": {name: file_sha256(directory / name) for name in files if _is_weight(name)},
        "versions": {"torch": _version("torch"), "transformers": _version("transformers"),
                     "python": sys.version.split()[0]},
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "meta": meta,
    }


def _write_marker(directory: Path, record: dict) -> None:
    """Write the completion marker atomically (a reader sees the old marker or the new one, never half)."""
    tmp = directory / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, directory / MARKER)


def _safetensors_problem(path: Path) -> str | None:
    """Check a safetensors file's header against its length (catches truncation without any record)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"{path.name} is truncated ({size} bytes, no header)"
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                return f"{path.name} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} has an unreadable header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} has {size} bytes but its header describes {8 + n + end}"
    return None


@dataclass
class CacheStatus:
    """What a cache directory holds compared with its record.

    ``state`` is ``absent``, ``ok``, ``unrecorded`` (a complete cache written before records existed),
    ``corrupt`` (``problems`` says how), or ``aside`` (a corrupt cache that was moved aside).
    """

    path: Path
    state: str
    problems: list[str] = field(default_factory=list)
    record: dict | None = None
    hashed: bool = False

    @property
    def usable(self) -> bool:
        """True when the cache may be loaded (complete, no known mismatch)."""
        return self.state in ("ok", "unrecorded")

    def weight_bytes(self) -> int:
        """Total size of the recorded weight files (0 when unrecorded)."""
        files = (self.record or {}).get("files", {})
        return sum(size for name, size in files.items() if _is_weight(name))


def inspect_cache(directory: Path, *, hashes: bool | None = None) -> CacheStatus:
    """Compare a cache directory with its record; hash the weights if ``hashes`` (None: only if small)."""
    directory = Path(directory)
    if _ASIDE in directory.name:
        return CacheStatus(directory, "aside", ["moved aside after a mismatch; safe to delete"])
    if not directory.is_dir():
        return CacheStatus(directory, "absent")
    marker = directory / MARKER
    if not marker.exists():
        return CacheStatus(directory, "corrupt", ["no completion marker (an interrupted build)"])
    try:
        record = json.loads(marker.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return CacheStatus(directory, "corrupt", [f"unreadable completion marker ({exc})"])
    problems: list[str] = []
    if record.get("format") != RECORD_FORMAT or not isinstance(record.get("files"), dict):
        # a marker from before records: nothing to compare with but the safetensors headers
        for p in sorted(directory.glob("*.safetensors")):
            if problem := _safetensors_problem(p):
                problems.append(problem)
        if not (directory / "config.json").exists():
            problems.append("config.json is missing")
        return CacheStatus(directory, "corrupt" if problems else "unrecorded", problems, {"meta": record})
    status = CacheStatus(directory, "ok", problems, record)
    for name, size in record["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, recorded {size}")
    if hashes is None:
        hashes = status.weight_bytes() <= HASH_ON_LOAD_MAX_BYTES
    if hashes and not problems:
        status.hashed = True
        for name, digest in record.get("sha256", {}).items():
            if file_sha256(directory / name) != digest:
                problems.append(f"{name} does not match its recorded sha256")
    status.state = "corrupt" if problems else "ok"
    return status


# ---------------------------------------------------------------- locking and moving aside


_LOCKS: dict[str, object] = {}


def _lock_for(directory: Path):
    """The process-wide FileLock of a cache directory (one object per path, so nested use is reentrant)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = str(directory.parent / f".{directory.name}.lock")
    if path not in _LOCKS:
        _LOCKS[path] = FileLock(path)
    return _LOCKS[path]


@contextlib.contextmanager
def cache_lock(directory: Path) -> Iterator[None]:
    """Hold the build lock of a cache directory (reentrant in a thread); say so when waiting for another process."""
    lock = _lock_for(directory)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for lock %s: another process is building or repairing %s", lock.lock_file, directory)
        lock.acquire()
        log.warning("got lock %s", lock.lock_file)
    try:
        yield
    finally:
        lock.release()


def move_aside(directory: Path, reason: str) -> Path:
    """Rename a mismatching cache to ``<dir>.corrupt-<UTC time>`` (kept for inspection) and warn with both paths."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = directory.with_name(f"{directory.name}{_ASIDE}{stamp}")
    if target.exists():
        target = target.with_name(f"{target.name}-{os.getpid()}-{secrets.token_hex(2)}")
    os.rename(directory, target)
    log.warning("cache %s does not match its record (%s); moved it aside to %s (delete it when done) and "
                "rebuilding", directory, reason, target)
    return target


# ---------------------------------------------------------------- loading and saving


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of parameters holding NaN or inf (a finite sum proves a tensor finite; otherwise check exactly)."""
    bad = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # memory-bound; 0.08 s for SmolLM2 on one thread, seconds when 2 threads contend
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not torch.isfinite(p.sum()) and not bool(torch.isfinite(p).all()):
                    bad.append(name)
    finally:
        torch.set_num_threads(threads)
    return bad


def _one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, followed by its root cause when it was raised from another."""

    def line(e: BaseException) -> str:
        text = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__

    root, seen = exc, {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        root = nxt
        seen.add(id(root))
    return line(exc) if root is exc else f"{line(exc)}, caused by {line(root)}"


def _clear_hint(directory: Path) -> str:
    try:
        name = directory.relative_to(cache_dir()).as_posix()
    except ValueError:
        name = str(directory)
    return f"`mechedit models --clear {name}`"


def _try_load(directory: Path):
    """Load a cache: (model, tok) and None; None and a corrupt CacheStatus; or (None, None) when absent.

    Raises CacheError, leaving the cache untouched, when loading fails although the files match their record.
    """
    status = inspect_cache(directory)
    if status.state == "absent":
        return None, None
    if not status.usable:
        return None, status
    try:
        # transformers is imported lazily: it adds ~2 s to every `import mechedit`
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        full = inspect_cache(directory, hashes=True)
        if full.state == "absent" or full.record != status.record:  # replaced by another process meanwhile
            return None, None
        if not full.usable:
            return None, full
        raise CacheError(f"could not load the cache {directory} ({_one_line(exc)}); its files match their "
                         f"record, so it was left untouched: fix the cause and retry") from exc
    bad = nonfinite_parameters(model)
    if bad:
        full = inspect_cache(directory, hashes=True)
        if full.state == "absent":
            return None, None
        if full.state == "unrecorded":
            full.state, full.problems = "corrupt", [f"non-finite weights in {bad[0]}"]
        if not full.usable:
            return None, full
        raise CacheError(f"the cache {directory} holds non-finite weights ({', '.join(bad[:3])}) although its "
                         f"files match their record (it was built that way); remove it with {_clear_hint(directory)}")
    if status.state == "unrecorded":
        _record_legacy(directory, status)
    return (model, tok), None


def _record_legacy(directory: Path, status: CacheStatus) -> None:
    """Write a full record into a cache from before records, once it loaded with finite weights."""
    try:
        lock = _lock_for(directory)
        lock.acquire(timeout=0)
    except Timeout:
        return  # another process holds the lock; it or a later load records the cache
    except OSError as exc:  # a read-only cache directory still loads
        log.info("could not lock %s to record its contents (%s)", directory, exc)
        return
    try:
        if inspect_cache(directory).state == "unrecorded":
            _write_marker(directory, make_record(directory, status.record["meta"] if status.record else {}))
            log.info("recorded the contents of %s", directory)
    except OSError as exc:
        log.info("could not record the contents of %s (%s)", directory, exc)
    finally:
        lock.release()


def quiet_transformers():
    """Context that hides transformers' progress bars and advisory warnings during loads."""
    # transformers is imported lazily: it adds ~2 s to every `import mechedit`
    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            hf_logging.enable_progress_bar()

    return ctx()


def load_cached_hf(directory: Path):
    """Load (hf_model, tokenizer) from a cache; None if absent or verifiably corrupt (then moved aside)."""
    directory = Path(directory)
    loaded, problem = _try_load(directory)
    if loaded is not None or problem is None:
        return loaded
    with cache_lock(directory):
        loaded, problem = _try_load(directory)  # another process may have repaired it meanwhile
        if problem is not None:
            move_aside(directory, "; ".join(problem.problems))
    return loaded


def save_cache(directory: Path, model, tok, meta: dict) -> None:
    """Write model + tokenizer into a hidden sibling, record it, and rename it into place (under the lock)."""
    directory = Path(directory)
    with cache_lock(directory):
        for stale in directory.parent.glob(f".{directory.name}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; no one else builds under the lock
        tmp = directory.parent / f".{directory.name}.build-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            _write_marker(tmp, make_record(tmp, meta))
            if directory.exists():
                move_aside(directory, "replaced by a new build")
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def load_or_build(directory: Path, build: Callable[[], tuple[object, object, dict]]):
    """Load a cache, or build it once across processes: ``build()`` returns (hf_model, tokenizer, metadata).

    The result is always loaded back from the cache, so every process gets identical weights.
    """
    directory = Path(directory)
    loaded, problem = _try_load(directory)
    if loaded is not None:
        return loaded
    with cache_lock(directory):
        loaded, problem = _try_load(directory)  # built or repaired by another process while we waited
        if loaded is not None:
            return loaded
        if problem is not None:
            move_aside(directory, "; ".join(problem.problems))
        model, tok, meta = build()
        bad = nonfinite_parameters(model)
        if bad:
            raise CacheError(f"building {directory} produced non-finite weights ({', '.join(bad[:3])}); "
                             f"nothing was cached")
        save_cache(directory, model, tok, meta)
        del model
        loaded, problem = _try_load(directory)
    if loaded is None:
        raise CacheError(f"the cache {directory} was just built but does not load "
                         f"({'; '.join(problem.problems) if problem else 'absent'})")
    return loaded


# ---------------------------------------------------------------- listing, verifying, clearing


def cache_entries(root: Path | None = None) -> list[Path]:
    """Every cache directory under the cache root (one level of grouping, e.g. ``factworld/<key>``), sorted."""
    root = root or cache_dir()

    def is_cache(p: Path) -> bool:
        return (p / MARKER).exists() or (p / "config.json").exists() or _ASIDE in p.name

    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if is_cache(p):
            out.append(p)
        else:
            out += [c for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".") and is_cache(c)]
    return out


def entry_name(path: Path) -> str:
    """The name of a cache entry relative to the cache root (what ``--clear`` takes)."""
    return path.relative_to(cache_dir()).as_posix()


def dir_bytes(path: Path) -> int:
    """Total size of the files in a directory tree."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def clear_cache(name: str) -> list[Path]:
    """Remove one cache entry (or a group such as ``factworld``) by name; ValueError naming the known ones."""
    root = cache_dir()
    entries = cache_entries(root)
    names = [entry_name(p) for p in entries]
    clean = name.strip().strip("/")
    targets = [p for p, n in zip(entries, names, strict=True) if n == clean or n.startswith(clean + "/")]
    if not clean or not targets:
        raise ValueError(f"no cache named '{name}' under {root}; known: {', '.join(names) or 'none'}")
    for p in targets:
        if _ASIDE in p.name:  # no process builds or loads a moved-aside copy
            shutil.rmtree(p)
            continue
        with cache_lock(p):
            shutil.rmtree(p)
    return targets
