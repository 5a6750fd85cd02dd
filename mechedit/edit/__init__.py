"""Localized editing and unlearning: the masked fine-tuner, its objectives and revertible weight deltas.

``edit(model, facts, localization, objective="edit", config=EditConfig())`` trains only the parameter
entries owned by the localization's components, in place, and returns an ``EditResult`` that can be
reverted bit-exactly, re-applied, saved and loaded. ``OBJECTIVES`` lists the objectives by name.
"""

from mechedit.edit.config import EditConfig, EditError
from mechedit.edit.objectives import OBJECTIVES, Objective, ObjectiveInputs, Terms, get_objective
from mechedit.edit.result import EditResult, compose
from mechedit.edit.trainer import edit, edit_sequence

__all__ = [
    "edit", "edit_sequence", "EditConfig", "EditError", "EditResult", "compose",
    "OBJECTIVES", "Objective", "ObjectiveInputs", "Terms", "get_objective",
]
