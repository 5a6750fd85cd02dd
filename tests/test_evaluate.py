"""Verification: behaviour metrics (null when nothing to score), relearning toward the TRUE answers, latent probes,
the verdict rule, bad input, metrics.json round-trip, and the caller's model never being modified."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mechedit.evaluate import (
    Evaluation,
    RelearnConfig,
    VerdictRule,
    decide,
    evaluate,
    fluency_kl,
    relearn_attack,
    score_behaviour,
)
from mechedit.evaluate.copying import clone_model
from mechedit.evaluate.evaluation import METRIC_KEYS
from mechedit.facts import FactError
from mechedit.models import fingerprint, hf_parameters
from patching.model import arch


@pytest.fixture(scope="module")
def edit_facts(sport_facts):
    """Sport facts with 16 marked for an edit (a new target each)."""
    return sport_facts.mark_forget(16, seed=0, with_targets=True)


@pytest.fixture(scope="module")
def small_edit(factworld, edit_facts):
    """An 'edit' of the first three MLPs made on a private copy of factworld (the session model stays base)."""
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.localize.localization import make_localization

    loc = make_localization(factworld, "mlps-0-2", [MLP(0), MLP(1), MLP(2)])
    cfg = EditConfig(steps=20, lr=3e-3, retain_pool=64, fluency_weight=0.0)
    return edit(clone_model(factworld), edit_facts, loc, "edit", cfg, progress=False)


def test_behaviour_nulls_and_values_on_the_base_model(factworld, sport_facts):
    facts = sport_facts.mark_forget(8, seed=1, with_targets=False)
    # no paraphrases, no targets, no neighbourhood prompts: those metrics are None, never 0
    bare = facts.subset([replace(f, paraphrases=()) for f in facts])
    b = score_behaviour(factworld, bare, n_shots=0, max_maintain=32, progress=False)
    assert b.forget_accuracy == 1.0 and b.maintain_accuracy == 1.0  # the base model knows its world
    assert b.paraphrase_forget_accuracy is None and b.paraphrase_edit_accuracy is None
    assert b.edit_accuracy is None and b.mcq_edit_accuracy is None and b.neighborhood_accuracy is None
    assert b.mcq_forget_error == 0.0 and b.n_paraphrase_items == 0
    # neighbourhood prompts: other subjects with the same true answer keep it
    forget = facts.forget_set()
    same = {f.answer: [g.render() for g in facts.maintain_set() if g.answer == f.answer][:2] for f in forget}
    hood = facts.subset([replace(f, neighborhood=tuple(same[f.answer])) if f.changes else f for f in facts])
    b2 = score_behaviour(factworld, hood, n_shots=0, max_maintain=32, progress=False)
    assert b2.n_neighborhood_items == 16 and b2.neighborhood_accuracy == 1.0
    assert b2.paraphrase_forget_accuracy == 1.0 and b2.n_paraphrase_items == 24


def test_fluency_kl_is_zero_for_the_same_model_and_positive_after_a_change(factworld):
    texts = ["Kalo Mirat plays the sport of golf", "The home city of Ven Dextor is Oslo"]
    assert fluency_kl(factworld, factworld, texts, progress=False) == pytest.approx(0.0, abs=1e-6)
    other = clone_model(factworld)
    with torch.no_grad():
        hf_parameters(other)["model.layers.1.mlp.down_proj.weight"].mul_(0.5)
    assert fluency_kl(factworld, other, texts, progress=False) > 1e-4


def test_relearning_trains_toward_the_true_answers(factworld, edit_facts, small_edit):
    edited = clone_model(factworld)
    small_edit.apply(edited)
    fp = fingerprint(edited)
    r = relearn_attack(edited, edit_facts, RelearnConfig(steps=10, eval_every=5), original=factworld,
                       progress=False)
    assert fingerprint(edited) == fp  # the attack ran on a copy
    assert r.steps == [0, 5, 10] and r.n_trained == 8 and r.n_heldout == 8
    assert r.trained_accuracy[0] <= 0.25 and r.trained_accuracy[-1] >= 0.75  # true answers of the trained half
    assert r.original_heldout_accuracy == 1.0 and 0.0 <= r.recovery_uniform <= 1.0
    assert r.chance == pytest.approx(0.25)
    assert r.config["mode"] == "lora" and r.config["rank"] == 8 and r.config["lr"] == 3e-3
    assert len(r.control_accuracy) == len(r.steps) == len(r.maintain_accuracy) and r.n_maintain_tracked > 0
    assert r.recovery is not None and r.recovery_ci["low"] <= r.recovery <= r.recovery_ci["high"]


def test_the_lora_attack_after_its_control_on_one_copy_is_the_attack_alone(factworld, edit_facts, small_edit):
    """The LoRA control and attack share one copy (adapters reset in between): the attack's curves, losses and
    relearned weights are bit-identical to an attack run alone on its own copy."""
    edited = clone_model(factworld)
    small_edit.apply(edited)
    runs = [relearn_attack(edited, edit_facts, RelearnConfig(steps=6, eval_every=3, control=control),
                           original=factworld, keep_model=True, progress=False) for control in (True, False)]
    (both, m_both), (alone, m_alone) = runs
    assert both.control_accuracy is not None and alone.control_accuracy is None
    for key in ("steps", "heldout_accuracy", "heldout_prob", "trained_accuracy", "loss", "maintain_accuracy"):
        assert getattr(both, key) == getattr(alone, key), key
    assert both.loss != both.loss[:1] * len(both.loss)  # it trained
    a, b = hf_parameters(m_both), hf_parameters(m_alone)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_verdict_rule():
    common = dict(forget_accuracy=0.0, original_forget_accuracy=1.0, chance=0.25)
    v = decide(**common, relearn_recovery=0.8, latent_after=0.3, latent_before=0.9, latent_chance=0.3)
    assert v.verdict == "suppressed" and v.signals["relearning"]["says"] == "suppressed"
    v = decide(**common, relearn_recovery=0.1, latent_after=0.3, latent_before=0.9, latent_chance=0.3,
               mean_cka=0.8)
    assert v.verdict == "removed" and v.signals["latent"]["value"] == 0.0
    assert v.signals["drift"]["value"] == pytest.approx(0.2) and len(v.reasons) == 3
    v = decide(**common, latent_after=0.8, latent_before=0.9, latent_chance=0.3)  # (0.8-0.3)/(0.9-0.3) = 0.83
    assert v.verdict == "suppressed" and v.signals["relearning"]["says"] == "not measured"
    assert decide(**common).verdict is None  # nothing decisive measured
    v = decide(forget_accuracy=1.0, original_forget_accuracy=1.0, chance=0.25, relearn_recovery=0.0)
    assert v.verdict == "suppressed"  # the model still gives the true answer
    strict = VerdictRule(relearn=0.05)
    assert decide(**common, relearn_recovery=0.1, rule=strict).verdict == "suppressed"
    # probes that barely beat chance on the original (SmolLM2 demo: 0.50 vs 0.25 on 8 facts... here 0.40 vs 0.25)
    # cannot show a loss: the latent signal is left out instead of normalizing by a tiny denominator
    v = decide(**common, relearn_recovery=0.1, latent_after=0.4, latent_before=0.4, latent_chance=0.25)
    assert v.verdict == "removed" and v.signals["latent"]["says"] == "not measured"
    assert v.signals["latent"]["detail"]["too_weak"] and any("not used" in r for r in v.reasons)
    v = decide(**common, latent_after=0.4, latent_before=0.4, latent_chance=0.25)
    assert v.verdict is None  # nothing decisive left
    # input-side attacks alone: one that recovers the facts says suppressed; none recovering is not a removal
    caught = {"soft-prompt": {"value": 0.7, "detail": {}}}
    assert decide(**common, attacks=caught).verdict == "suppressed"
    missed = {"soft-prompt": {"value": 0.1, "detail": {}}, "in-context": {"value": None, "detail": {}}}
    v = decide(**common, attacks=missed)
    assert v.verdict is None and any("removal needs relearning or latent probes" in r for r in v.reasons)
    assert decide(**common, attacks=missed, relearn_recovery=0.1).verdict == "removed"


def test_latent_probes_train_on_extra_facts_but_never_on_forget_subjects(factworld, sport_facts, monkeypatch):
    from mechedit.evaluate import latent as latent_mod

    facts = sport_facts.sample(40, seed=1).mark_forget(8, seed=0, with_targets=True)
    seen: list[list[str]] = []
    real = latent_mod._features

    def spy(model, fs, batch_size, progress):
        seen.append([f.subject for f in fs])
        return real(model, fs, batch_size, progress)

    monkeypatch.setattr(latent_mod, "_features", spy)
    small = latent_mod.latent_probes(factworld, factworld, facts, fresh=False, progress=False)
    big = latent_mod.latent_probes(factworld, factworld, facts, fresh=False, progress=False, train_facts=sport_facts)
    forget = {f.subject for f in facts.forget_set()}
    pools = [s for s in seen if not set(s) <= forget]  # feature calls on training pools (not on the forget facts)
    assert len(pools) == 2 and len(pools[1]) > 3 * len(pools[0])
    assert not forget & set(pools[1])
    assert big.n_train > 3 * small.n_train
    assert big.best("original_before") >= 0.9  # the unedited model: the true answer is decodable


def test_bad_input(factworld, sport_facts, edit_facts, small_edit):
    from mechedit.edit import EditError

    other = clone_model(factworld)
    with torch.no_grad():
        hf_parameters(other)["model.norm.weight"].add_(0.01)
    with pytest.raises(EditError, match="fingerprint"):
        evaluate(other, edit_facts, edit=small_edit, progress=False)
    one = sport_facts.mark_forget(1, seed=0, with_targets=False)
    with pytest.raises(FactError, match="at least 4 forget facts"):
        relearn_attack(factworld, one, progress=False)
    with pytest.raises(FactError, match="no facts marked"):
        score_behaviour(factworld, sport_facts, progress=False)


def test_evaluate_an_edit_end_to_end(factworld, edit_facts, small_edit, tmp_path):
    before = fingerprint(factworld)
    ev = evaluate(factworld, edit_facts, edit=small_edit, relearn=True, relearn_config=RelearnConfig(steps=5),
                  max_maintain=32, progress=False)
    assert fingerprint(factworld) == before  # evaluated on an edited copy
    m = ev.metrics
    assert all(k in m for k in METRIC_KEYS)
    assert m["forget_accuracy"] <= 0.25 and m["edit_accuracy"] >= 0.75 and m["maintain_accuracy"] >= 0.8
    assert m["n_params_trained"] == small_edit.n_params_trained and m["fluency_kl"] > 0
    assert m["neighborhood_accuracy"] is None  # factworld facts have no neighbourhood prompts
    assert len(m["latent_probe_accuracy"]) == 4 and m["verdict"] in ("removed", "suppressed")
    assert ev.original_behaviour.forget_accuracy == 1.0 and ev.extra["mcq_shots"] == 0  # prefix hurts factworld
    lat = ev.latent
    assert max(lat.original_quality["last"]) >= 0.9  # probes work on the original model's maintain facts
    assert lat.original_before["last"][-1] >= 0.9
    v = ev.verdict.signals
    assert v["relearning"]["value"] == m["relearn_recovery"] and v["behaviour"]["detail"]["chance"] == 0.25
    path = ev.save(tmp_path / "metrics.json")
    again = Evaluation.load(path)
    assert again.to_dict() == ev.to_dict()
    assert np.isclose(again.relearn.relearn_accuracy, ev.relearn.relearn_accuracy)
    # the same edit evaluated from the edited side (model carries the edit, the original is rebuilt)
    edited = clone_model(factworld)
    small_edit.apply(edited)
    ev2 = evaluate(edited, edit_facts, edit=small_edit, latent=False, max_maintain=32, n_shots=0, progress=False)
    assert ev2.behaviour.forget_accuracy == ev.behaviour.forget_accuracy
    assert ev2.original_behaviour.forget_accuracy == 1.0 and ev2.verdict.verdict is None


def test_cli_evaluate_and_wrong_model(edit_facts, small_edit, tmp_path):
    import json

    from typer.testing import CliRunner

    from mechedit.cli import app

    edit_dir = small_edit.save(tmp_path / "edit")
    edit_facts.to_csv(edit_dir / "facts.csv")
    out = tmp_path / "metrics.json"
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "factworld", "factworld", "--edit", str(edit_dir), "--out", str(out),
                              "--no-latent", "--max-maintain", "16"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.read_text())
    assert metrics["forget_accuracy"] <= 0.25 and metrics["verdict"] is None  # no relearning, no probes
    assert metrics["behaviour"]["n_forget"] == 16 and metrics["extra"]["facts_source"].startswith("marks from")
    meta = json.loads((edit_dir / "edit.json").read_text())
    meta["base_fingerprint"] = meta["edited_fingerprint"] = "0123456789abcdef"
    (edit_dir / "edit.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["evaluate", "factworld", "factworld", "--edit", str(edit_dir), "--out", str(out),
                              "--force"])
    assert res.exit_code == 2 and "fingerprint" in res.output


def test_localized_vs_nonlocalized_with_the_same_objective_steps_and_lr(factworld, sport_facts):
    """Both arms unlearn the same 16 facts with the same objective (log1-p) and the documented default recipe
    (``EditConfig()``: 60 steps, lr 1e-3); only the trained components differ (the probe's fact-lookup MLPs vs every
    MLP and attention weight). Chosen before running and not tuned. Measured on factworld: both hide the facts
    (forget accuracy 0.06 each), both are "removed" (relearning recovers 0.00 for both; latent best 0.38 localized,
    0.25 nonlocalized), held-out maintain 1.00 vs 0.97, fluency KL 0.011 vs 0.023. So the paper's ordering
    (localized more robust) does NOT appear on factworld at matched settings: the earlier contrast of this test
    (gradient ascent on all weights vs log1-p on the MLPs, different steps and lr) came from the objectives. What
    holds: the localized edit is not more robust here, and it disturbs generic text less."""
    from mechedit.edit import EditConfig, edit
    from mechedit.localize import localize
    from mechedit.localize.localization import make_localization

    facts = sport_facts.mark_forget(16, seed=0, with_targets=False)
    cfg = EditConfig()

    def run(loc):
        result = edit(clone_model(factworld), facts, loc, "log1-p", cfg, progress=False)
        ev = evaluate(factworld, facts, edit=result, relearn=True, latent=True, max_maintain=32, n_shots=0,
                      progress=False)
        assert ev.behaviour.forget_accuracy <= 0.25  # the edit does hide the facts
        return ev

    probe = localize(factworld, facts, "probe", progress=False)
    local = run(make_localization(factworld, "probe-mlps", probe.mlps))
    full = run(localize(factworld, facts, "nonlocalized", progress=False))
    assert local.metrics["verdict"] == full.metrics["verdict"] == "removed"
    assert local.relearn.recovery <= 0.25 and full.relearn.recovery <= 0.25
    assert max(local.latent_probe_accuracy) >= max(full.latent_probe_accuracy)  # not more robust than nonlocalized
    assert local.metrics["maintain_accuracy"] >= 0.9 and full.metrics["maintain_accuracy"] >= 0.9  # held-out half
    assert local.fluency_kl < full.fluency_kl


def _dominant_sport_facts(sport_facts, share: float = 0.8, n: int = 16):
    """Sport facts whose forget half is ~``share`` one sport (interleaved so both halves are alike), rest maintain."""
    by = {}
    for f in sport_facts:
        by.setdefault(f.answer, []).append(f)
    top = max(by, key=lambda a: len(by[a]))
    n_top = round(share * n)
    others = [f for a, fs in by.items() if a != top for f in fs]
    forget = by[top][:n_top] + others[: n - n_top]
    order = [forget[i] for i in range(0, n, 2)] + [forget[i] for i in range(1, n, 2)]  # halves share the mix
    chosen = {id(f) for f in forget}
    rest = [f for f in sport_facts if id(f) not in chosen][:48]
    marked = [replace(f, forget=True) for f in order]
    return sport_facts.subset(marked + rest), top


def test_relearn_control_catches_a_dominant_answer(factworld, sport_facts):
    """Planted: 80 % of the forget facts (both halves) share one sport, suppressed together by an NPO edit of all
    MLPs. Training toward the trained half re-teaches that common answer, which lifts the held-out half whether or
    not anything was remembered; the prior-only control (trained answers shuffled) gets that lift too, so the
    control-based recovery must stay below the verdict's 0.5. Threshold set before the run, not tuned. Measured on
    the first run: held-out 0.375 after the attack, 0.5 after the control, recovery -0.25 (the raw lift was smaller
    than planned, so the test does not also claim that the uniform-chance recovery is fooled). The LoRA attack
    leaves the caller's model bit-identical."""
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.localize.localization import make_localization

    facts, top = _dominant_sport_facts(sport_facts)
    edited = clone_model(factworld)
    loc = make_localization(factworld, "all-mlps", [MLP(i) for i in range(arch(factworld).n_layers)])
    edit(edited, facts, loc, "npo", EditConfig(steps=15, lr=1e-3, retain_pool=32, fluency_weight=0.0),
         progress=False)
    fp = fingerprint(edited)
    r, relearned = relearn_attack(edited, facts, RelearnConfig(steps=20), original=factworld, keep_model=True,
                                  progress=False)
    assert fingerprint(edited) == fp and fingerprint(relearned) != fp  # the attack trained a copy only
    assert r.config["mode"] == "lora" and r.n_trainable < sum(p.numel() for p in hf_parameters(edited).values())
    assert r.trained_accuracy[-1] >= 0.75  # the attack did learn its training facts
    assert r.recovery is not None and r.recovery < 0.5  # the held-out lift is no more than the prior's


def test_too_few_forget_facts_make_relearning_null_not_fatal(factworld, sport_facts):
    """Three forget facts cannot be split into trained and held-out halves: null with a note, evaluation goes on."""
    facts = sport_facts.mark_forget(3, seed=0, with_targets=False)
    ev = evaluate(factworld, facts, relearn=True, latent=False, max_maintain=16, progress=False)
    assert ev.relearn is None and "at least 4 forget facts" in ev.extra["relearn_note"]
    assert ev.metrics["relearn_recovery"] is None and ev.verdict.signals["relearning"]["value"] is None
    assert ev.metrics["forget_accuracy"] is not None


def test_unknown_relearn_mode_is_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from mechedit.cli import app

    with pytest.raises(ValueError, match="choose from lora, full"):
        RelearnConfig(mode="bogus")
    res = CliRunner().invoke(app, ["evaluate", "factworld", "factworld", "--relearn", "--relearn-mode", "bogus",
                                   "--out", str(tmp_path / "m.json")])
    assert res.exit_code != 0 and "--relearn-mode" in res.output and "lora, full" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "m.json").exists()


def test_a_shared_memo_changes_no_number(factworld, edit_facts, small_edit):
    """Evaluating two edits of one fact set with one OriginalMemo gives exactly the numbers of evaluating each
    alone; the second evaluation reuses the original model's features, probes, Fisher and fluency."""
    from mechedit.memo import OriginalMemo

    def numbers(ev):
        d = ev.to_dict()
        d["extra"] = {k: v for k, v in d["extra"].items() if k != "timings_s"}
        return d

    other = replace(small_edit, new={k: v * 0.5 + small_edit.old[k] * 0.5 for k, v in small_edit.new.items()})
    memo = OriginalMemo()
    kw = dict(latent=True, diagnostics=True, max_maintain=32, n_shots=0, progress=False)
    alone = [numbers(evaluate(factworld, edit_facts, edit=e, **kw)) for e in (small_edit, other)]
    shared = [numbers(evaluate(factworld, edit_facts, edit=e, memo=memo, **kw)) for e in (small_edit, other)]
    assert shared == alone
    assert memo.hits >= 4  # features, Fisher, latent features and probes, fluency log-probabilities
    assert alone[0] != alone[1]  # two different edits: the memo held only what they share
