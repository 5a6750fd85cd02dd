"""mechedit: mechanistic localization and editing of facts in language models."""

from mechedit.components import MLP, Attn, Head, component_slices, n_params
from mechedit.facts import Fact, FactError, FactSet, load_facts
from mechedit.localization import Localization
from mechedit.localize import localize
from mechedit.models import ModelNotAvailable, load_model

__all__ = [
    "MLP", "Attn", "Head", "component_slices", "n_params",
    "Fact", "FactError", "FactSet", "load_facts",
    "Localization", "localize",
    "ModelNotAvailable", "load_model",
]
__version__ = "0.1.0"
