"""Held-out measurements: the editor's retain / evaluation split of maintain facts and fluency text, and the
verdict's behaviour signal over every prompt format (planted cases; nothing here was tuned to pass)."""

from __future__ import annotations

from dataclasses import MISSING, fields, replace

import pytest

from mechedit.edit.split import (
    fact_key,
    maintain_of,
    recorded_retain_keys,
    split_from_keys,
    split_maintain,
    split_texts,
)
from mechedit.evaluate.behaviour import Behaviour
from mechedit.evaluate.copying import clone_model


@pytest.fixture(scope="module")
def marked(sport_facts):
    """40 sport facts: 8 marked for an edit, 32 maintain facts."""
    return sport_facts.sample(40, seed=3).mark_forget(8, seed=0, with_targets=True)


def test_split_is_disjoint_non_empty_seeded_and_order_free(marked):
    maintain = maintain_of(marked)
    s = split_maintain(maintain, seed=0)
    retain, held = {fact_key(f) for f in s.retain}, {fact_key(f) for f in s.evaluation}
    assert retain and held and not retain & held and retain | held == {fact_key(f) for f in maintain}
    assert len(held) == 16  # half of 32
    again = split_maintain(maintain.shuffled(5), seed=0)  # the rule ranks by a hash, not by position
    assert {fact_key(f) for f in again.evaluation} == held
    assert {fact_key(f) for f in split_maintain(maintain, seed=1).evaluation} != held
    # the split recorded by an editor reproduces the same halves
    rec = split_from_keys(maintain, s.retain_keys)
    assert {fact_key(f) for f in rec.evaluation} == held
    # too few to split: everything may be trained on, nothing is held out, and the note says why
    one = split_maintain(maintain[:1], seed=0)
    assert one.evaluation is None and len(one.retain) == 1 and "too few" in one.note
    train, test = split_texts([f"text {i}" for i in range(10)], seed=0)
    assert len(train) == len(test) == 5 and not set(train) & set(test)
    assert split_texts(["only one"], seed=0) == (["only one"], [])


def test_editor_never_sees_a_held_out_fact(factworld, marked, monkeypatch):
    """Every text the editor tokenizes (prompts, retain facts, fluency sentences, causal-teacher replacements) is
    recorded; none mentions a subject of the held-out half, and the edit records the split evaluate reuses."""
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.edit import data as data_mod
    from mechedit.edit import trainer as trainer_mod
    from mechedit.evaluate.evaluation import heldout_split
    from mechedit.localize.localization import make_localization

    seen: list[str] = []
    real = data_mod.token_rows

    def spy(model, texts, max_tokens=None):
        seen.extend(texts)
        return real(model, texts, max_tokens)

    monkeypatch.setattr(data_mod, "token_rows", spy)
    monkeypatch.setattr(trainer_mod, "token_rows", spy)
    loc = make_localization(factworld, "mlp-1", [MLP(1)])
    cfg = EditConfig(steps=2, seed=4, fluency_text="facts", teacher_subjects=4)
    results = [edit(clone_model(factworld), marked, loc, obj, cfg, progress=False)
               for obj in ("edit", "causal-teacher")]
    split = split_maintain(maintain_of(marked), seed=4)
    held = [f.subject for f in split.evaluation]
    retain = [f.subject for f in split.retain]
    assert seen and any(s in t for t in seen for s in retain)  # the spy saw the retain facts ...
    assert not [t for t in seen if any(s in t for s in held)]  # ... and never a held-out one
    for r in results:
        assert sorted(recorded_retain_keys(r.extra)) == sorted(split.retain_keys)
        assert r.extra["heldout"]["n_evaluation"] == len(held) and r.extra["heldout"]["n_fluency_heldout"] > 0
        again, seed, _ = heldout_split(marked, edit=r, seed=99)  # evaluate's seed does not matter: recorded split
        assert [f.subject for f in again.evaluation] == held and seed == 4


def test_evaluate_scores_maintain_and_fluency_on_the_held_out_half(factworld, marked):
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.evaluate import evaluate
    from mechedit.localize.localization import make_localization

    loc = make_localization(factworld, "mlp-1", [MLP(1)])
    result = edit(clone_model(factworld), marked, loc, "edit", EditConfig(steps=10, lr=3e-3), progress=False)
    ev = evaluate(factworld, marked, edit=result, latent=False, n_shots=0, progress=False)
    b, m = ev.behaviour, ev.metrics
    split = split_maintain(maintain_of(marked), seed=0)
    held, retain = {fact_key(f) for f in split.evaluation}, {fact_key(f) for f in split.retain}
    assert set(b.per_fact["maintain_accuracy"]) == held and set(b.per_fact["maintain_accuracy_train"]) == retain
    assert b.n_maintain == 16 and b.n_maintain_train == 16 and m["maintain_accuracy_train"] is not None
    assert set(b.per_fact["forget_accuracy"]) == {fact_key(f) for f in marked.forget_set()}
    fl = ev.fluency
    assert fl["n_heldout"] == 16 and fl["n_train"] == 16 and len(fl["heldout_per_text"]) == 16
    assert m["fluency_kl"] == pytest.approx(sum(fl["heldout_per_text"]) / 16) and m["fluency_kl_train"] > 0
    assert ev.extra["heldout"]["source"] == "recorded"


def _behaviour(**values) -> Behaviour:
    """A Behaviour with every metric None except ``values``."""
    base = {f.name: None for f in fields(Behaviour) if f.default is MISSING and f.default_factory is MISSING}
    return replace(Behaviour(**base), **values)


def test_mcq_still_giving_the_old_answer_is_not_removed(sport_facts):
    """Constructed: the training prompt and the paraphrases are at chance after the edit, the relearning attack
    recovers nothing, but the multiple-choice prompt still gives the true answer for 7 of 8 facts."""
    from mechedit.evaluate import Evaluation
    from mechedit.evaluate.evaluation import verdict_of
    from mechedit.evaluate.relearn import RelearnResult

    facts = sport_facts.sample(20, seed=0).mark_forget(8, seed=0, with_targets=True)
    original = _behaviour(forget_accuracy=1.0, paraphrase_forget_accuracy=1.0, mcq_forget_error=0.0)
    edited = _behaviour(forget_accuracy=0.0, paraphrase_forget_accuracy=0.25, mcq_forget_error=0.125)
    relearn = RelearnResult(steps=[0], heldout_accuracy=[0.0], heldout_prob=[0.1], trained_accuracy=[0.0],
                            loss=[], relearn_accuracy=0.0, chance=0.25, original_heldout_accuracy=1.0,
                            recovery=0.0, n_trained=4, n_heldout=4, n_maintain=4)
    ev = Evaluation(behaviour=edited, original_behaviour=original, relearn=relearn)
    v = verdict_of(ev, facts)
    beh = v.signals["behaviour"]
    assert v.verdict != "removed" and beh["says"] == "suppressed"
    assert beh["detail"]["deciding_format"] == "mcq"
    assert beh["value"] == pytest.approx((0.875 - 0.25) / (1.0 - 0.25))  # 4 options: chance 0.25
    assert beh["detail"]["formats"]["prompt"]["normalized"] == 0.0
    assert beh["detail"]["formats"]["paraphrase"]["normalized"] == 0.0  # at chance, not "kept"
    # the same edit with the MCQ at chance too: every format says gone, and so does relearning
    gone = replace(edited, mcq_forget_error=0.75)
    v2 = verdict_of(Evaluation(behaviour=gone, original_behaviour=original, relearn=relearn), facts)
    assert v2.verdict == "removed" and v2.signals["behaviour"]["value"] == 0.0
