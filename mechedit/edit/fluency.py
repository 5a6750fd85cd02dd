"""Generic text for the fluency term (KL to the original model's next-token distributions).

``"facts"``: complete sentences about the maintain facts (prompt or a paraphrase, then the true answer) —
the right choice for the factworld model, whose whole language is its world. ``"bundled"``: the neutral
everyday English in ``mechedit/data/fluency.txt`` (62 sentences written for mechedit, ~4.5 KB). ``"auto"``
picks ``"facts"`` for factworld and ``"bundled"`` otherwise; any other value is a text file, one text a line.

``fluency_split`` gives the editor and ``evaluate`` disjoint halves (``mechedit.edit.split``): sentences about
the retain facts / about the held-out maintain facts, or a seeded half of the lines of a text file.
"""

from __future__ import annotations

import random
from pathlib import Path

from mechedit.data import data_path
from mechedit.edit.config import EditError
from mechedit.edit.split import EVAL_FRACTION, MaintainSplit, split_texts
from mechedit.facts import FactSet
from mechedit.models import model_info
from patching.model import Model

BUNDLED_FLUENCY = "fluency.txt"
N_FACT_SENTENCES = 64


def fact_sentences(facts: FactSet, seed: int, n: int = N_FACT_SENTENCES) -> list[str]:
    """``n`` seeded sentences stating maintain facts, each in its prompt or a random paraphrase."""
    rng = random.Random(f"{seed}|fluency")
    picked = facts.sample(n, seed)
    out = []
    for f in picked:
        template = rng.choice((f.prompt,) + tuple(f.paraphrases))
        out.append(f"{f.render(template)} {f.answer}")
    return out


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise EditError(f"fluency text {str(path)!r} is not 'auto', 'facts', 'bundled' or an existing file")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise EditError(f"fluency text file {path} has no non-empty line")
    return texts


def fluency_texts(model: Model, maintain: FactSet | None, source: str, seed: int) -> tuple[list[str], str]:
    """The fluency texts for ``model`` and a one-line description of where they came from."""
    if source == "auto":
        source = "facts" if model_info(model).name == "factworld" else "bundled"
    if source == "facts":
        if maintain is None:
            raise EditError("fluency_text='facts' needs maintain facts; the fact set has none")
        return fact_sentences(maintain, seed), f"{min(N_FACT_SENTENCES, len(maintain))} maintain-fact sentences"
    if source == "bundled":
        return read_texts(data_path(BUNDLED_FLUENCY)), f"bundled {BUNDLED_FLUENCY}"
    return read_texts(source), str(source)


def fluency_split(model: Model, split: MaintainSplit, source: str, seed: int, fraction: float = EVAL_FRACTION
                  ) -> tuple[list[str], list[str], str]:
    """(training texts for the editor, held-out texts for ``fluency_kl``, a description of the source)."""
    if source == "auto":
        source = "facts" if model_info(model).name == "factworld" else "bundled"
    if source == "facts":
        if split.retain is None and split.evaluation is None:
            raise EditError("fluency_text='facts' needs maintain facts; the fact set has none")
        train = fact_sentences(split.retain, seed) if split.retain is not None else []
        held = fact_sentences(split.evaluation, seed) if split.evaluation is not None else []
        return train, held, f"sentences about maintain facts ({len(train)} retain, {len(held)} held out)"
    texts = read_texts(data_path(BUNDLED_FLUENCY)) if source == "bundled" else read_texts(source)
    train, held = split_texts(texts, seed, fraction)
    name = f"bundled {BUNDLED_FLUENCY}" if source == "bundled" else str(source)
    return train, held, f"{name} ({len(train)} training, {len(held)} held-out lines)"
