"""Where mechedit keeps its caches (dequantized SmolLM2, trained factworld)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the user cache directory (``$MECHEDIT_CACHE`` or ``~/.cache/mechedit``), creating it."""
    root = Path(os.environ.get("MECHEDIT_CACHE", Path.home() / ".cache" / "mechedit")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
