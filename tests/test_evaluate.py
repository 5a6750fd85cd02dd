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
    assert r.original_heldout_accuracy == 1.0 and 0.0 <= r.recovery <= 1.0
    assert r.chance == pytest.approx(0.25)


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
    with pytest.raises(FactError, match="at least 2 forget facts"):
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
    res = runner.invoke(app, ["evaluate", "factworld", "factworld", "--edit", str(edit_dir), "--out", str(out)])
    assert res.exit_code == 2 and "fingerprint" in res.output


def test_nonlocalized_ga_is_suppressed_and_fact_lookup_edit_is_removed(factworld, sport_facts):
    """The paper's contrast on factworld v2 (measured: GA verdict 'suppressed', maintain 0.28, latent best 0.44;
    log1-p on the probe's MLPs 0-1 'removed', maintain 1.00, latent at chance). Relearning recovers nothing for
    either here (0.0 both), so it cannot order them; the latent probes do."""
    from mechedit.edit import EditConfig, edit
    from mechedit.localize import localize
    from mechedit.localize.localization import make_localization

    facts = sport_facts.mark_forget(16, seed=0, with_targets=False)

    def run(loc, objective, cfg):
        result = edit(clone_model(factworld), facts, loc, objective, cfg, progress=False)
        ev = evaluate(factworld, facts, edit=result, relearn=True, latent=True, max_maintain=32, n_shots=0,
                      progress=False)
        assert ev.behaviour.forget_accuracy <= 0.25  # the edit does hide the facts
        return ev

    ga = run(localize(factworld, facts, "nonlocalized", progress=False), "ga", EditConfig(steps=12, warmup=2))
    assert ga.metrics["verdict"] == "suppressed"
    probe = localize(factworld, facts, "probe", progress=False)
    mlp = run(make_localization(factworld, "probe-mlps", probe.mlps), "log1-p", EditConfig(steps=40, lr=3e-3))
    assert mlp.metrics["verdict"] == "removed" and mlp.metrics["maintain_accuracy"] >= 0.9
    assert max(mlp.latent_probe_accuracy) < max(ga.latent_probe_accuracy)
    assert mlp.relearn.recovery <= ga.relearn.recovery
