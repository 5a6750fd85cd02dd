"""Training data of an edit: tokenized forget prompts, a maintain pool and fluency texts, with answer ids.

Only the retain half of the maintain facts and the training half of the fluency texts are used
(``mechedit.edit.split``); the other halves are held out for ``evaluate``.

Prompts are the facts' training prompts (plain format, ``Fact.render()``), tokenized as ``mechedit.tokens``
does (no special tokens, BOS only if the model uses one); answers are scored at their first token after a
leading space, the convention of ``mechedit.scoring``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Int

from mechedit.edit.config import EditConfig, EditError
from mechedit.edit.fluency import fluency_split
from mechedit.edit.split import MaintainSplit, split_maintain
from mechedit.facts import FactError, FactSet
from mechedit.models import model_info
from mechedit.tokens import candidate_token_ids, first_token_id
from patching.model import Model


@dataclass
class EditData:
    """Token ids (one list per text) and first-token answer ids for every pool an edit trains on."""

    forget: FactSet
    forget_rows: list[list[int]]
    answer_ids: Int[torch.Tensor, " n_forget"]
    target_ids: Int[torch.Tensor, " n_forget"]  # -1 where a fact has no target
    random_ids: Int[torch.Tensor, " n_forget"]
    retain: FactSet | None
    retain_rows: list[list[int]]
    retain_answer_ids: Int[torch.Tensor, " n_retain"]
    fluency_rows: list[list[int]]
    fluency_source: str
    pad_id: int
    split: MaintainSplit | None = None  # retain half (the editor's) and held-out half of the maintain facts
    n_fluency_heldout: int = 0  # fluency texts held out for evaluation


def token_rows(model: Model, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text (BOS first if the model uses one), optionally cut to ``max_tokens``."""
    tok = model.tokenizer
    bos = [tok.bos_token_id] if model_info(model).prepend_bos and tok.bos_token_id is not None else []
    rows = [bos + list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if max_tokens is not None:
        rows = [r[:max_tokens] for r in rows]
    empty = [t for t, r in zip(texts, rows, strict=True) if not r]
    if empty:
        raise EditError(f"text {empty[0]!r} tokenizes to nothing")
    return rows


def _random_wrong(tokenizer, forget: FactSet, seed: int) -> list[int]:
    """One random candidate other than the answer (and target) per fact, fixed under ``seed``."""
    out = []
    for f in forget:
        ids = candidate_token_ids(tokenizer, f)
        wrong = [t for c, t in zip(f.candidates, ids, strict=True) if c not in (f.answer, f.target)]
        wrong = wrong or [t for c, t in zip(f.candidates, ids, strict=True) if c != f.answer]
        if not wrong:
            raise EditError(f"fact about {f.subject!r} has no candidate other than its answer (needed by rlabel)")
        out.append(random.Random(f"{seed}|rlabel|{f.subject}|{f.prompt}").choice(wrong))
    return out


def prepare(model: Model, facts: FactSet, cfg: EditConfig, needs: frozenset[str], use_fluency: bool) -> EditData:
    """Split ``facts`` into forget / maintain, tokenize them and the fluency texts; check what the objective needs."""
    tok = model.tokenizer
    forget_list = [f for f in facts if f.changes]
    if not forget_list:
        raise EditError(f"fact set '{facts.name}' has no fact to change: give facts a target or forget=1 "
                        "(or use FactSet.mark_forget)")
    forget = facts.subset(forget_list, f"{facts.name}:forget")
    maintain_list = [f for f in facts if not f.changes]
    maintain = facts.subset(maintain_list, f"{facts.name}:maintain") if maintain_list else None
    if "target" in needs:
        missing = [f.subject for f in forget if f.target is None]
        if missing:
            raise EditError(f"this objective needs a target for every forget fact; {missing[0]!r} has none")
    if "retain" in needs and maintain is None:
        raise EditError(f"this objective needs maintain facts (facts without target/forget); '{facts.name}' has none")
    try:
        answer_ids = [first_token_id(tok, f.answer) for f in forget]
        target_ids = [first_token_id(tok, f.target) if f.target else -1 for f in forget]
        random_ids = _random_wrong(tok, forget, cfg.seed) if "random" in needs else [-1] * len(forget)
    except FactError as exc:
        raise EditError(str(exc)) from None
    same = [f for f, a, t in zip(forget, answer_ids, target_ids, strict=True) if a == t]
    if same:  # training toward the answer's own first token would change nothing measurable
        raise EditError(f"{same[0].origin or repr(same[0].subject)}: target {same[0].target!r} has the same first "
                        f"token as the answer {same[0].answer!r}; give a target with a different first token")
    split = split_maintain(maintain, cfg.seed, cfg.eval_fraction)
    retain = (split.retain.sample(cfg.retain_pool, cfg.seed) if split.retain is not None and "retain" in needs
              else None)
    retain_list = list(retain) if retain is not None else []
    fl_texts, fl_held, fl_source = ([], [], "none")
    if use_fluency:
        fl_texts, fl_held, fl_source = fluency_split(model, split, cfg.fluency_text, cfg.seed, cfg.eval_fraction)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return EditData(
        forget=forget, forget_rows=token_rows(model, [f.render() for f in forget]),
        answer_ids=torch.tensor(answer_ids), target_ids=torch.tensor(target_ids), random_ids=torch.tensor(random_ids),
        retain=retain, retain_rows=token_rows(model, [f.render() for f in retain_list]) if retain_list else [],
        retain_answer_ids=torch.tensor([first_token_id(tok, f.answer) for f in retain_list], dtype=torch.long),
        fluency_rows=token_rows(model, fl_texts, cfg.fluency_max_tokens) if fl_texts else [],
        fluency_source=fl_source, pad_id=pad, split=split, n_fluency_heldout=len(fl_held),
    )
