"""In-context attack: does reminding the model of related facts bring a forgotten one back?

Each held-out forget prompt (the second half of ``relearn_split``) is preceded by ``statements`` statements —
``"{prompt} {answer}."`` joined by spaces — of *other* facts with their true answers, drawn under the seed per
held-out fact: from the **trained half of the forget facts** (context ``forget``: the facts never include the
one asked about) and, separately, from the **maintain facts** (context ``maintain``). Each context is read as
plain text and, when the tokenizer has a chat template (instruct models), in the chat template (``scoring.
chat_wrap``: the whole text is the user's sentence to complete and the assistant's prefilled start); without a
chat template only plain text is run (recorded in the settings). The curve is held-out accuracy against the
number of statements, 0 to ``statements``, the same first statements at every length.

The scale's top is the **original model under the same context**: factworld, trained on single sentences,
stops answering at all once statements precede the prompt (1.00 -> 0.25 with four), so what the context lets
an intact model show is the most the attack could reveal; when that is not above the control the signal is
null (noted), never a "removed".

Controls (``mechedit.evaluate.attacks.result``), per context and format: the identical attack on the original
model's never-known twins (statements about twins of the trained half, or the same maintain statements), and on
the edited model with the statements' answers shuffled among themselves (prior-only). The attack's signal is
its strongest arm (context × format) above that arm's larger control.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from mechedit.evaluate.attacks.controls import AttackSplit, attack_split, prior_answers
from mechedit.evaluate.attacks.result import AttackArm, AttackResult, score_arm
from mechedit.evaluate.attacks.target import Target
from mechedit.facts import Fact, FactError, FactSet
from mechedit.models import model_info
from mechedit.scoring import render_items
from mechedit.stats import chance_accuracy
from patching.model import Model

NAME = "in-context"
CONTEXTS = ("forget", "maintain")


@dataclass(frozen=True)
class InContextConfig:
    """How many statements precede each held-out prompt, which contexts run, and whether to also use chat."""

    statements: int = 4
    contexts: tuple[str, ...] = CONTEXTS
    chat: bool | None = None  # None: when the tokenizer has a chat template
    control: bool = True  # also run the prior-only control (shuffled statement answers)

    def __post_init__(self):
        if self.statements < 1:
            raise ValueError(f"--in-context-statements must be at least 1, got {self.statements}")
        bad = [c for c in self.contexts if c not in CONTEXTS]
        if bad or not self.contexts:
            raise ValueError(f"in-context contexts {list(self.contexts)}: choose from {', '.join(CONTEXTS)}")

    def to_dict(self) -> dict:
        """The recipe as recorded in results."""
        return asdict(self)


def statement(fact: Fact, answer: str) -> str:
    """``"{prompt} {answer}."``: one fact stated in its own prompt."""
    return f"{fact.render()} {answer.strip()}."


def choose_context(pool: list[tuple[Fact, str]], n: int, seed: int, key: str) -> list[str]:
    """``n`` statements drawn from ``pool`` under ``seed`` and ``key`` (the asked fact), all if fewer."""
    rng = random.Random(f"{seed}|{key}")
    picked = rng.sample(range(len(pool)), min(n, len(pool)))
    return [statement(*pool[i]) for i in picked]


def context_correct(target: Target, heldout: FactSet, contexts: list[list[str]], n: int, fmt: str) -> np.ndarray:
    """Per-fact forced-choice true-answer correctness with the first ``n`` statements of each fact's context."""
    items = []
    for i, (f, ctx) in enumerate(zip(heldout, contexts, strict=True)):
        prefix = " ".join(ctx[:n]) + " " if n else ""
        items.append(replace(render_items(target.tokenizer, [f], fmt, prefix=prefix)[0], fact_index=i))
    return target.correct(items)


def _curve(target: Target, heldout: FactSet, contexts: list[list[str]], n: int,
           fmt: str) -> tuple[list[float], np.ndarray]:
    """(held-out accuracy with 0..n statements, per-fact correctness with n)."""
    per = [context_correct(target, heldout, contexts, k, fmt) for k in range(n + 1)]
    return [float(p.mean()) for p in per], per[-1]


def _pools(split: AttackSplit, context: str, seed: int) -> dict[str, list[tuple[Fact, str]]]:
    """The statement pools of one context for the attack, the never-known control and the prior-only control."""
    if context == "forget":
        own, twins = list(split.trained), list(split.twins_trained)
    else:
        own = twins = list(split.maintain)
    shuffled = prior_answers(split.trained if context == "forget" else split.maintain, seed)
    return {"attack": [(f, f.answer) for f in own], "never_known": [(f, f.answer) for f in twins],
            "prior": list(zip(own, shuffled, strict=True))}


def in_context_attack(edited: Model, facts: FactSet, config: InContextConfig | None = None, *,
                      original: Model | None = None, seed: int = 0, progress: bool = True) -> AttackResult:
    """Run every context × format arm with both controls (module docstring); no model is modified.

    Fewer than 4 forget facts, or no original model: a result with a note and a null signal. A context without
    facts (no maintain facts) is left out with a note.
    """
    cfg = config or InContextConfig()
    chat = model_info(edited).chat if cfg.chat is None else cfg.chat
    formats = ("prompt", "chat") if chat else ("prompt",)
    settings = {**cfg.to_dict(), "formats": list(formats), "seed": seed}
    try:
        split = attack_split(facts, "the in-context attack", seed)
    except FactError as exc:
        return AttackResult(NAME, settings, note=str(exc))
    result = AttackResult(NAME, settings, chance=chance_accuracy([len(f.candidates) for f in split.heldout]),
                          n_trained=len(split.trained), n_heldout=len(split.heldout))
    if original is None:
        result.note = "the in-context attack needs the original model (never-known control and scale)"
        return result
    notes = []
    t0 = time.perf_counter()
    on_edited, on_original = Target.of(edited), Target.of(original)
    n = cfg.statements
    bar = tqdm(total=len(cfg.contexts) * len(formats), desc="in-context attack", disable=not progress, leave=False)
    for context in cfg.contexts:
        if context == "maintain" and split.maintain is None:
            notes.append("no maintain facts: the maintain context was not run")
            bar.update(len(formats))
            continue
        pools = _pools(split, context, seed)
        if len(pools["attack"]) < n:
            notes.append(f"{context} context: only {len(pools['attack'])} facts for {n} statements")
        ctx = {arm: [choose_context(pool, n, seed, f.subject) for f in split.heldout] for arm, pool in pools.items()}
        for fmt in formats:
            bar.set_postfix(context=context, format=fmt)
            att, att_last = _curve(on_edited, split.heldout, ctx["attack"], n, fmt)
            never, never_last = _curve(on_original, split.twins_heldout, ctx["never_known"], n, fmt)
            prior, prior_last = (_curve(on_edited, split.heldout, ctx["prior"], n, fmt) if cfg.control
                                 else (None, None))
            orig, _ = _curve(on_original, split.heldout, ctx["attack"], n, fmt)
            arm = AttackArm(
                name=f"{context} statements" + (", chat" if fmt == "chat" else ""), steps=list(range(n + 1)),
                heldout_accuracy=att, never_known_accuracy=never, prior_accuracy=prior, original_accuracy=orig[-1],
                original_curve=orig)
            result.arms.append(score_arm(arm, att_last, never_last, prior_last, seed=seed))
            bar.update(1)
    bar.close()
    result.never_known_original = on_original.accuracy(split.twins_heldout)
    result.seconds = {"attack": time.perf_counter() - t0}
    if notes:
        result.extra["notes"] = notes
    return result
