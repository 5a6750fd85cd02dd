"""Behaviour of an edited model: forced-choice accuracy on prompts, paraphrases, MCQs and neighbourhoods, fluency.

Every metric is an argmax accuracy over the fact's candidates' first tokens plus the mean probability
renormalized over those candidates (``mechedit.scoring``). A metric with nothing to score (no paraphrases, no
targets, no neighbourhood prompts) is ``None``, never 0.

Maintain facts are split as the editor split them (``mechedit.edit.split``): ``maintain_*`` is measured on the
held-out half only, ``maintain_*_train`` on the editor's retain half. ``per_fact`` keeps every fact's score
(keyed by ``fact_key``) so that ``compare`` can bootstrap over facts and pair methods on the same facts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechedit.edit.split import MaintainSplit, fact_key, maintain_of, split_maintain
from mechedit.facts import Fact, FactError, FactSet
from mechedit.memo import OriginalMemo, remembered
from mechedit.models import model_info
from mechedit.scoring import ChoiceItem, ChoiceScores, render_items, score_items
from mechedit.tokens import PromptBatch, candidate_token_ids, encode
from patching.families import final_hidden, unembed
from patching.model import Model


@dataclass
class Behaviour:
    """Behavioural metrics of one model on a fact set with marked forget/edit facts (None = nothing to score)."""

    forget_accuracy: float | None  # true answer still the argmax on the training prompt (lower = more forgotten)
    forget_prob: float | None
    edit_accuracy: float | None  # new target is the argmax (None without targets)
    edit_prob: float | None
    maintain_accuracy: float | None  # held-out maintain facts (never trained on by the editor)
    maintain_prob: float | None
    paraphrase_forget_accuracy: float | None
    paraphrase_forget_prob: float | None
    paraphrase_edit_accuracy: float | None
    paraphrase_edit_prob: float | None
    paraphrase_maintain_accuracy: float | None
    mcq_forget_error: float | None  # 1 - true-answer accuracy on shuffled few-shot MCQs
    mcq_forget_prob: float | None  # renormalized probability of the true option
    mcq_edit_accuracy: float | None
    mcq_edit_prob: float | None
    mcq_maintain_accuracy: float | None
    neighborhood_accuracy: float | None  # other subjects' prompts keep the (shared) true answer
    neighborhood_prob: float | None
    n_forget: int = 0
    n_maintain: int = 0  # maintain facts scored (a seeded sample when there are many)
    n_paraphrase_items: int = 0
    n_neighborhood_items: int = 0
    mcq_shots: list[str] = field(default_factory=list)  # subjects of the few-shot MCQ examples
    maintain_accuracy_train: float | None = None  # the editor's retain facts (a training-set number)
    maintain_prob_train: float | None = None
    n_maintain_train: int = 0
    maintain_note: str | None = None  # why maintain_accuracy is null (e.g. too few maintain facts to hold out)
    per_fact: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> fact_key -> value

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return asdict(self)


def _mean(s: ChoiceScores | None, name: str) -> float | None:
    return None if s is None or len(s.fact_index) == 0 else s.mean(name)


def _has_targets(facts: Sequence[Fact]) -> bool:
    return any(f.target for f in facts)


def mcq_prefix(facts: Sequence[Fact], seed: int = 0, style: str = "text") -> str:
    """A few-shot prefix: ``facts`` rendered as answered multiple-choice questions, blank-line separated."""
    shots = []
    for f in facts:
        text, options, ans, _ = f.mcq(seed=seed, style=style)
        shot = options[ans] if style == "text" else "ABCDEFGH"[ans]
        shots.append(f"{text} {shot}")
    return "".join(s + "\n\n" for s in shots)


def neighborhood_items(tokenizer, facts: Sequence[Fact]) -> list[ChoiceItem]:
    """Forced-choice items for the facts' neighbourhood prompts (complete prompts whose answer is the true one)."""
    items = []
    for i, f in enumerate(facts):
        if not f.neighborhood:
            continue
        ids = candidate_token_ids(tokenizer, f)
        for p in f.neighborhood:
            items.append(ChoiceItem(i, p, "", ids, f.candidates.index(f.answer), None))
    return items


def split_for_behaviour(facts: FactSet, n_shots: int, max_maintain: int | None, seed: int,
                        split: MaintainSplit | None = None) -> tuple[FactSet, list[Fact], list[Fact], list[Fact]]:
    """(forget facts, MCQ shot facts, held-out maintain facts to score, retain maintain facts to score).

    Shots are maintain facts never scored, taken from the retain half (the held-out half when there is none).
    ``split`` defaults to ``split_maintain`` of the maintain facts under ``seed``.
    """
    if not any(f.changes for f in facts):
        raise FactError(f"fact set '{facts.name}' has no facts marked to forget or edit (no 'target' or 'forget' "
                        "column); mark some, e.g. FactSet.mark_forget(n, seed) or --n-forget")
    forget = facts.forget_set()
    split = split if split is not None else split_maintain(maintain_of(facts), seed)
    rng = random.Random(f"behaviour-{seed}")
    retain = list(split.retain) if split.retain is not None else []
    held = list(split.evaluation) if split.evaluation is not None else []
    rng.shuffle(retain)
    rng.shuffle(held)
    if len(retain) >= n_shots:
        shots, retain = retain[:n_shots], retain[n_shots:]
    else:
        shots, held = held[:n_shots], held[n_shots:]
    if max_maintain is not None:
        retain, held = retain[:max_maintain], held[:max_maintain]
    return forget, shots, held, retain


def _per_fact(s: ChoiceScores | None, facts: Sequence[Fact], name: str, flip: bool = False) -> dict[str, float]:
    """fact_key -> mean of a score field over the fact's items (paraphrases average per fact)."""
    if s is None or len(s.fact_index) == 0:
        return {}
    values = getattr(s, name).astype(float)
    out = {}
    for i in np.unique(s.fact_index):
        v = float(values[s.fact_index == i].mean())
        out[fact_key(facts[int(i)])] = 1.0 - v if flip else v
    return out


@torch.no_grad()
def score_behaviour(
    model: Model, facts: FactSet, *, seed: int = 0, n_shots: int = 3, max_maintain: int | None = 256,
    mcq_style: str = "text", batch_size: int = 64, progress: bool = True, split: MaintainSplit | None = None,
) -> Behaviour:
    """Score ``model`` on the forget/edit facts (prompt, paraphrases, few-shot MCQ, neighbourhood) and maintain facts.

    MCQ options are shuffled under ``seed``; the few-shot prefix uses ``n_shots`` maintain facts (excluded from the
    maintain scores). ``max_maintain`` caps the (seeded) sample of maintain facts scored in each half; ``split``
    is the editor's retain / held-out split (default: ``split_maintain`` under ``seed``).
    """
    forget, shots, maintain, retain = split_for_behaviour(facts, n_shots, max_maintain, seed, split)
    tok = model.tokenizer
    fmt_mcq = "mcq" if mcq_style == "text" else "mcq-letter"
    prefix = mcq_prefix(shots, seed=seed, style=mcq_style)
    jobs: dict[str, list[ChoiceItem]] = {
        "forget": render_items(tok, forget, "prompt"),
        "forget_para": render_items(tok, forget, "paraphrase"),
        "forget_mcq": render_items(tok, forget, fmt_mcq, seed=seed, prefix=prefix),
        "neighborhood": neighborhood_items(tok, forget),
    }
    if maintain:
        jobs["maintain"] = render_items(tok, maintain, "prompt")
        jobs["maintain_para"] = render_items(tok, maintain, "paraphrase")
        jobs["maintain_mcq"] = render_items(tok, maintain, fmt_mcq, seed=seed, prefix=prefix)
    if retain:
        jobs["maintain_train"] = render_items(tok, retain, "prompt")
    # one scoring pass over all items (fewer, fuller batches), then split back
    flat = [it for items in jobs.values() for it in items]
    scores = score_items(model, flat, batch_size=batch_size, progress=progress)
    out: dict[str, ChoiceScores | None] = {}
    start = 0
    for name, items in jobs.items():
        sl = slice(start, start + len(items))
        start += len(items)
        out[name] = ChoiceScores(scores.fact_index[sl], scores.answer_correct[sl], scores.answer_prob[sl],
                                 scores.target_correct[sl], scores.target_prob[sl]) if items else None
    has_t = _has_targets(forget)
    mcq_true = _mean(out["forget_mcq"], "answer_correct")

    def tgt(name: str, field_: str) -> float | None:
        return _mean(out[name], field_) if has_t else None

    forget_list = list(forget)
    per_fact = {
        "forget_accuracy": _per_fact(out["forget"], forget_list, "answer_correct"),
        "paraphrase_forget_accuracy": _per_fact(out["forget_para"], forget_list, "answer_correct"),
        "mcq_forget_error": _per_fact(out["forget_mcq"], forget_list, "answer_correct", flip=True),
        "maintain_accuracy": _per_fact(out.get("maintain"), maintain, "answer_correct"),
        "maintain_accuracy_train": _per_fact(out.get("maintain_train"), retain, "answer_correct"),
    }
    if has_t:
        per_fact["edit_accuracy"] = _per_fact(out["forget"], forget_list, "target_correct")
        per_fact["paraphrase_edit_accuracy"] = _per_fact(out["forget_para"], forget_list, "target_correct")
        per_fact["mcq_edit_accuracy"] = _per_fact(out["forget_mcq"], forget_list, "target_correct")
    note = None
    if not maintain:
        note = (split.note if split is not None and split.note else None) or "no held-out maintain facts to score"
    return Behaviour(
        forget_accuracy=_mean(out["forget"], "answer_correct"), forget_prob=_mean(out["forget"], "answer_prob"),
        edit_accuracy=tgt("forget", "target_correct"), edit_prob=tgt("forget", "target_prob"),
        maintain_accuracy=_mean(out.get("maintain"), "answer_correct"),
        maintain_prob=_mean(out.get("maintain"), "answer_prob"),
        paraphrase_forget_accuracy=_mean(out["forget_para"], "answer_correct"),
        paraphrase_forget_prob=_mean(out["forget_para"], "answer_prob"),
        paraphrase_edit_accuracy=tgt("forget_para", "target_correct"),
        paraphrase_edit_prob=tgt("forget_para", "target_prob"),
        paraphrase_maintain_accuracy=_mean(out.get("maintain_para"), "answer_correct"),
        mcq_forget_error=None if mcq_true is None else 1.0 - mcq_true,
        mcq_forget_prob=_mean(out["forget_mcq"], "answer_prob"),
        mcq_edit_accuracy=tgt("forget_mcq", "target_correct"), mcq_edit_prob=tgt("forget_mcq", "target_prob"),
        mcq_maintain_accuracy=_mean(out.get("maintain_mcq"), "answer_correct"),
        neighborhood_accuracy=_mean(out["neighborhood"], "answer_correct"),
        neighborhood_prob=_mean(out["neighborhood"], "answer_prob"),
        n_forget=len(forget), n_maintain=len(maintain), n_paraphrase_items=len(jobs["forget_para"]),
        n_neighborhood_items=len(jobs["neighborhood"]), mcq_shots=[f.subject for f in shots],
        maintain_accuracy_train=_mean(out.get("maintain_train"), "answer_correct"),
        maintain_prob_train=_mean(out.get("maintain_train"), "answer_prob"), n_maintain_train=len(retain),
        maintain_note=note, per_fact=per_fact,
    )


# ---------------------------------------------------------------------- fluency


@torch.no_grad()
def next_token_kl(
    original: Model, edited: Model, texts: Sequence[str], *, batch_size: int = 16, progress: bool = True,
    memo: OriginalMemo | None = None,
) -> Float[torch.Tensor, " n_texts"]:
    """Mean over real (non-pad) positions of KL(original ‖ edited) next-token distributions, per text.

    ``memo``: reuse the original model's log-probabilities from an earlier call (``mechedit.memo``).
    """
    if not texts:
        raise ValueError("no texts to measure fluency on")
    prepend = model_info(original).prepend_bos
    out = torch.zeros(len(texts))
    chunks = [range(s, min(s + batch_size, len(texts))) for s in range(0, len(texts), batch_size)]
    for chunk in tqdm(chunks, desc="fluency KL", disable=not progress or len(chunks) < 4, leave=False):
        b = encode(original.tokenizer, [texts[i] for i in chunk], None, prepend_bos=prepend)
        lp = remembered(memo, ("next-token-logp", tuple(texts[i] for i in chunk)), lambda b=b: _real_logp(original, b))
        kl = (lp.exp() * (lp - _real_logp(edited, b))).sum(-1)  # per real token, rows in order
        lengths = b.attention_mask.sum(1)
        row = torch.repeat_interleave(torch.arange(len(chunk)), lengths)
        out[list(chunk)] = torch.zeros(len(chunk)).index_add(0, row, kl) / lengths
    return out


@torch.no_grad()
def _real_logp(model: Model, b: PromptBatch) -> Float[torch.Tensor, "n_real vocab"]:
    """Next-token log-probabilities at every real token of a batch (row-major), from a packed forward."""
    real = b.attention_mask.bool()
    hidden = final_hidden(model, b.input_ids, b.attention_mask, pack=True)[real]
    return torch.log_softmax(unembed(model, hidden).float(), -1)


def fluency_kl(
    original: Model, edited: Model, texts: Sequence[str], *, batch_size: int = 16, progress: bool = True,
    memo: OriginalMemo | None = None,
) -> float:
    """Mean next-token KL(original ‖ edited) on generic text: 0 when the edit leaves general language untouched."""
    return float(next_token_kl(original, edited, texts, batch_size=batch_size, progress=progress, memo=memo).mean())


def choose_shots(model: Model, facts: FactSet, options: Sequence[int] = (3, 0), *, seed: int = 0, n_facts: int = 64,
                 batch_size: int = 64) -> tuple[int, dict[int, float]]:
    """The few-shot count (of ``options``) giving ``model`` the best MCQ accuracy on a sample of maintain facts.

    Run on the *original* model, so the choice never depends on the edit; ties go to the first option. A
    tiny model trained only on zero-shot MCQs (factworld) is confused by a prefix; instruct models gain from it.
    """
    maintain = facts.maintain_set() if len(facts.forget_set()) < len(facts) else None
    if maintain is None or len(maintain) <= max(options) + 1:
        return options[0], {}
    pool = list(maintain.shuffled(seed))
    shots_pool, scored = pool[: max(options)], pool[max(options): max(options) + n_facts]
    accs: dict[int, float] = {}
    for k in options:
        items = render_items(model.tokenizer, scored, "mcq", seed=seed, prefix=mcq_prefix(shots_pool[:k], seed))
        accs[k] = float(score_items(model, items, batch_size=batch_size).answer_correct.mean())
    best = max(options, key=lambda k: (accs[k], -options.index(k)))
    return best, accs
