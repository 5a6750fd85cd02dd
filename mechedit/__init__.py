"""mechedit: mechanistic localization and editing of facts in language models."""

from mechedit.components import MLP, Attn, Head, component_slices, n_params
from mechedit.facts import Fact, FactError, FactSet, load_facts
from mechedit.localize.localization import Localization
from mechedit.models import ModelNotAvailable, load_model
from mechedit.scoring import known_facts
from mechedit.tokens import validate_facts

__all__ = [
    "MLP", "Attn", "Head", "component_slices", "n_params",
    "Fact", "FactError", "FactSet", "load_facts",
    "Localization",
    "ModelNotAvailable", "load_model",
    "known_facts", "validate_facts",
]
__version__ = "0.1.0"
