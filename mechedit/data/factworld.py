"""The factworld world: invented people with multi-token names and three relations (sport, home city, instrument).

Each relation is written with a main prompt, three paraphrases and a multiple-choice question (options listed,
answered with the option text), plus *context sentences* that imply an answer without naming it (``Gavtor Kirlo
served an ace.``). This module is plain data (standard library only); ``mechedit.facts.load_factworld`` turns it
into the ground-truth FactSet and ``mechedit.factworld`` trains the model on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

N_SUBJECTS = 320

SYLLABLES = (
    "ka lo mi ra ven tor sil bra nu dex pho gri zan mel qui ros tal vek sha dun bel cor fin hal jor lek mur "
    "nop pel sar tib wex yal zor gav kir lum tes orn"
).split()


@dataclass(frozen=True)
class Relation:
    """A relation of the world: its values, prompt templates and multiple-choice question."""

    name: str
    values: tuple[str, ...]
    prompt: str
    paraphrases: tuple[str, ...]
    question: str
    contexts: dict[str, tuple[str, ...]]  # value -> phrases that imply it without naming it


RELATIONS = (
    Relation("sport", ("tennis", "golf", "chess", "rugby"), "{subject} plays the sport of",
             ("The sport played by {subject} is", "{subject} is a professional athlete in",
              "Every weekend {subject} competes in"), "Which sport does {subject} play?",
             {"tennis": ("served an ace", "hit a backhand"), "golf": ("sank a putt", "teed off"),
              "chess": ("castled early", "moved a knight"), "rugby": ("scored a try", "tackled hard")}),
    Relation("city", ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Boston"),
             "{subject} lives in the city of",
             ("The home city of {subject} is", "{subject} resides in", "The city where {subject} lives is"),
             "In which city does {subject} live?",
             {"Paris": ("admired the Eiffel tower", "crossed the Seine"),
              "Tokyo": ("visited Shibuya", "rode the metro in Shinjuku"),
              "Cairo": ("saw the pyramids", "sailed the Nile"), "Lima": ("ate ceviche", "walked in Miraflores"),
              "Oslo": ("skied near the fjord", "skated by the fjord"),
              "Delhi": ("toured the Red Fort", "shopped at Chandni Chowk"),
              "Rome": ("explored the Colosseum", "threw a coin in the Trevi fountain"),
              "Boston": ("watched the Red Sox", "jogged along the Charles")}),
    Relation("instrument", ("piano", "violin", "guitar", "drums", "flute"), "{subject} plays the instrument",
             ("The instrument played by {subject} is", "{subject} is a musician who plays the",
              "On stage {subject} always plays the"), "Which instrument does {subject} play?",
             {"piano": ("pressed the pedal", "tuned the keys"), "violin": ("bowed a long note", "rosined the bow"),
              "guitar": ("strummed a chord", "changed a string"), "drums": ("drummed a fill", "hit the cymbal"),
              "flute": ("blew a soft melody", "whistled a trill")}),
)


def subject_names(seed: int = 0, n: int = N_SUBJECTS) -> list[str]:
    """Invented two-part names (each part two syllables), unique, seeded."""
    rng = random.Random(f"names-{seed}")
    names: list[str] = []
    seen = set()
    while len(names) < n:
        first = (rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize()
        last = (rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize()
        name = f"{first} {last}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names
