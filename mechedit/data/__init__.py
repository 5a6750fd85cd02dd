"""Data shipped inside the package: bundled fact sets and the generic fluency text."""

from __future__ import annotations

from pathlib import Path


def data_path(name: str) -> Path:
    """Return the path of a data file shipped inside the package."""
    return Path(__file__).parent / name
