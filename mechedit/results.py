"""The one result protocol: every saved result (Localization, PatchResult, EditResult, Evaluation, MethodRun,
Comparison) has ``to_dict``/``from_dict``, ``save(path) -> Path``, ``load(path)``, a checked ``format_version``
and one free-form field, ``extra``.

The implementation is ``patching.result.SavedResult`` (``patching`` never imports ``mechedit``, so the shared
base lives there and mechedit reuses it).
"""

from __future__ import annotations

from patching.result import FormatError, SavedResult, json_default

__all__ = ["FormatError", "SavedResult", "json_default"]
