"""Input-side attacks (soft prompt, in-context) and their controls, on factworld with planted ground truth.

Planted, not tuned: the edits, the fact sample and every threshold below were written down before the first run
and are not adjusted to make a test pass; the numbers measured on the first run are quoted in each docstring.

* the forget set is balanced by construction (8 facts per sport, 4 per sport in each half), so a control that
  learns only the answer prior gets exactly chance (0.25) on the held-out half;
* never-known facts are invented subjects (``data.factworld.invented_subjects``): the model was never taught them;
* **output suppression**: only the last layer's MLP (MLP 3) is trained to avoid the old answers (log1-p, 40
  steps at lr 3e-2) — the lookup MLPs and every residual before MLP 3 are untouched. The recipe was chosen on
  the edit's behaviour alone, before any attack ran: the editor's default (60 steps at lr 1e-3) left 0.75 of the
  balanced forget set answered, 40 steps at 1e-2 left 0.44, 40 steps at 3e-2 leaves 0.28 (chance 0.25) with
  maintain facts at 0.81;
* **heavy erasure**: the fact-lookup MLPs 0-2 trained hard (log1-p, 40 steps at lr 1e-2; MLP 3 untouched):
  forget facts at 0.00, maintain at 0.72.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import numpy as np
import pytest

from mechedit.evaluate.attacks import (
    AttackResult,
    InContextConfig,
    SoftPromptConfig,
    in_context_attack,
    parse_attacks,
    soft_prompt_attack,
)
from mechedit.evaluate.attacks.soft_prompt import check_length
from mechedit.evaluate.copying import clone_model
from mechedit.models import hf_model_of, weights_digest
from mechedit.stats import difference_ci

N_PER_ANSWER = 8  # forget facts per sport: 32 forget facts, 16 held out
SP = SoftPromptConfig(steps=20, eval_every=10)  # fewer steps than the default 50, for test time
NEAR_CHANCE = 0.25 + 0.2  # chance on the balanced held-out half, plus about two standard errors of 16 facts
THRESHOLD = 0.5  # the verdict's threshold (VerdictRule.soft_prompt / in_context)


@pytest.fixture(scope="module")
def balanced(sport_facts):
    """32 forget facts (8 per sport; each half 4 per sport, interleaved) and 64 maintain facts."""
    by: dict[str, list] = {}
    for f in sport_facts:
        by.setdefault(f.answer, []).append(f)
    chosen = [fs[:N_PER_ANSWER] for fs in by.values()]
    order = [group[i] for i in range(0, N_PER_ANSWER, 2) for group in chosen] + \
            [group[i] for i in range(1, N_PER_ANSWER, 2) for group in chosen]
    taken = {id(f) for f in order}
    maintain = [f for f in sport_facts if id(f) not in taken][:64]
    return sport_facts.subset([replace(f, forget=True) for f in order] + maintain, "sport-balanced")


def _edited(factworld, facts, layers, steps, lr):
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.localize.localization import make_localization

    model = clone_model(factworld)
    loc = make_localization(factworld, f"mlps-{layers}", [MLP(i) for i in layers])
    edit(model, facts, loc, "log1-p", EditConfig(steps=steps, lr=lr, fluency_weight=0.0), progress=False)
    return model


def _attacked(model, factworld, facts):
    """Both attacks on ``model`` (default in-context recipe, SP soft prompt), checking no weight moved."""
    before = {id(m): weights_digest(m) for m in (model, factworld)}
    flags = [p.requires_grad for p in hf_model_of(model).parameters()]
    out = {"soft-prompt": soft_prompt_attack(model, facts, SP, original=factworld, progress=False),
           "in-context": in_context_attack(model, facts, original=factworld, progress=False)}
    assert {id(m): weights_digest(m) for m in (model, factworld)} == before  # bit-exact
    assert [p.requires_grad for p in hf_model_of(model).parameters()] == flags
    return out


@pytest.fixture(scope="module")
def suppressed(factworld, balanced):
    """(edited model, attack results): output suppression in the last MLP only."""
    model = _edited(factworld, balanced, [3], steps=40, lr=3e-2)
    return model, _attacked(model, factworld, balanced)


@pytest.fixture(scope="module")
def erased(factworld, balanced):
    """(edited model, attack results): heavy erasure of the fact-lookup MLPs 0-2."""
    model = _edited(factworld, balanced, [0, 1, 2], steps=40, lr=1e-2)
    return model, _attacked(model, factworld, balanced)


def test_split_and_controls_are_the_relearning_split(factworld, balanced, erased):
    """The attacks hold out the relearning attack's second half; never-known twins are invented subjects with the
    same prompts and answers; every arm reports both controls beside itself."""
    from mechedit.evaluate.attacks.controls import attack_split
    from mechedit.evaluate.relearn import relearn_split

    split = attack_split(balanced, "test")
    trained, heldout, _ = relearn_split(balanced)
    assert [f.subject for f in split.heldout] == [f.subject for f in heldout] and len(heldout) == 16
    assert [f.answer for f in split.twins_heldout] == [f.answer for f in heldout]
    world = {f.subject for f in balanced}
    assert not world & {f.subject for f in list(split.twins_trained) + list(split.twins_heldout)}
    for r in erased[1].values():
        assert r.n_heldout == 16 and r.n_trained == 16 and r.arms
        for arm in r.arms:
            assert arm.prior_accuracy is not None and len(arm.never_known_accuracy) == len(arm.steps)
    sp = erased[1]["soft-prompt"]
    assert sp.settings["lr"] == SP.lr and sp.settings["steps"] == 20 and sp.settings["tokens"] == 8
    assert sp.arms[0].steps == [0, 10, 20] and len(sp.arms[0].loss) == 20
    assert [a.name for a in erased[1]["in-context"].arms] == ["forget statements", "maintain statements"]
    assert erased[1]["in-context"].settings["formats"] == ["prompt"]  # factworld has no chat template


def test_never_known_control_stays_near_chance(suppressed, erased):
    """Planted: invented subjects with a balanced answer set. Whatever either attack elicits there is made up, and
    a made-up answer is right at chance: the never-known control must stay below chance + 0.2 at the end of every
    arm, and the original model itself must not know the invented subjects. Measured on the first run: the
    original answers 0.19 of them; the controls end at 0.12-0.25."""
    for _, results in (suppressed, erased):
        for r in results.values():
            assert r.never_known_original <= NEAR_CHANCE
            for arm in r.arms:
                assert arm.never_known_accuracy[-1] <= NEAR_CHANCE, (r.attack, arm.name, arm.never_known_accuracy)


def test_heavy_erasure_is_not_caught(erased):
    """Planted: the lookup MLPs were trained hard to drop the facts. No attack may show a held-out recovery above
    its control at the verdict's threshold (a null signal — nothing the attack could show — is not a catch).
    Measured on the first run: soft prompt 0.31 held out against its never-known control 0.25 (signal 0.08);
    in-context null (the original under context is not 0.2 above the control)."""
    for r in erased[1].values():
        assert r.signal is None or r.signal < THRESHOLD, (r.attack, r.summary())


@pytest.mark.xfail(strict=True, reason="measured, not tuned: on factworld neither input-side attack recovers facts "
                                       "suppressed in the last MLP alone (see the docstring)")
def test_output_suppression_is_caught_by_an_attack(suppressed):
    """Planted: only MLP 3 was trained, so the facts are intact in every residual before it — a suppression by
    construction (forget facts at 0.28, chance 0.25). The issue asks that at least one input-side attack catch it
    (signal ≥ 0.5).

    It does not on factworld. Measured on the first run: the prepended soft prompt (20 steps) learns its 16
    training facts (1.00) and lifts the held-out half to 0.56, but its prior-only control reaches 0.38, so the
    signal is 0.30 (95 % CI [-0.3, 0.9]); the in-context signal is null because four statements of context
    already stop the *unedited* factworld model from answering (0.31-0.38, trained on single sentences), so the
    attack has no room to show anything. Kept as a strict xfail so that an attack that starts catching it is
    noticed, and so that nobody reads the input-side attacks' silence on factworld as evidence of removal."""
    assert any(r.signal is not None and r.signal >= THRESHOLD for r in suppressed[1].values())


def test_in_context_is_null_when_the_context_hides_facts_from_the_original(erased):
    """The in-context scale's top is the original model under the same statements; on factworld the statements
    stop the original answering, so the signal is null with a note rather than a 'removed'."""
    for arm in erased[1]["in-context"].arms:
        assert arm.original_curve[0] == 1.0 and len(arm.original_curve) == 5
        if arm.signal is None:
            assert "could not show a loss" in arm.note


def test_too_few_forget_facts_give_a_note_and_a_null_signal(factworld, sport_facts):
    facts = sport_facts[:40].mark_forget(3, seed=0, with_targets=False)
    for attack in (soft_prompt_attack, in_context_attack):
        r = attack(factworld, facts, original=factworld, progress=False)
        assert r.signal is None and "at least 4 forget facts" in r.note and not r.arms
        assert AttackResult.from_dict(json.loads(json.dumps(r.to_dict()))).note == r.note


def test_bad_soft_prompt_length_and_attack_names_are_one_line_errors(factworld, balanced, tmp_path):
    from typer.testing import CliRunner

    from mechedit.cli import app

    for tokens in (0, -3):
        with pytest.raises(ValueError, match="--soft-prompt-tokens must be at least 1"):
            SoftPromptConfig(tokens=tokens)
    with pytest.raises(ValueError, match=r"--soft-prompt-tokens 500: .* context of 128 positions; use at most"):
        check_length(factworld, balanced.forget_set(), 500)
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attacks("soft-prompt,jailbreak")
    with pytest.raises(ValueError, match="--in-context-statements must be at least 1"):
        InContextConfig(statements=0)
    for argv, culprit in ((["--attacks", "soft-prompt", "--soft-prompt-tokens", "0"], "--soft-prompt-tokens"),
                          (["--attacks", "bogus"], "--attacks")):
        res = CliRunner().invoke(app, ["evaluate", "factworld", "factworld", "--out", str(tmp_path / "m.json"), *argv])
        assert res.exit_code == 2 and culprit in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "m.json").exists()


def test_evaluate_writes_attacks_to_metrics_and_the_verdict(factworld, balanced, tmp_path):
    """``evaluate(..., attacks=...)`` puts each attack's result into the Evaluation, metrics.json and the verdict,
    round-trips, and feeds the figure code (short attack settings: this checks plumbing, not strength)."""
    from mechedit.compare import CompareSettings, Comparison, MethodRun
    from mechedit.components import MLP
    from mechedit.evaluate import Evaluation, evaluate
    from mechedit.evaluate.evaluation import verdict_of
    from mechedit.localize.localization import make_localization
    from mechedit.plots.attacks import attack_sections, plot_attacks

    forget, maintain = balanced.forget_set(), balanced.maintain_set()
    small = balanced.subset(forget.facts[::4] + maintain.facts[:16])  # 8 forget facts: 2 per sport in each half
    edited = _edited(factworld, small, [3], steps=5, lr=1e-3)
    configs = {"soft-prompt": SoftPromptConfig(steps=3, eval_every=3), "in-context": InContextConfig(statements=2,
                                                                                                    contexts=("forget",))}
    ev = evaluate(edited, small, original=factworld, latent=False, n_shots=0, max_maintain=16, progress=False,
                  attacks=["soft-prompt", "in-context"], attack_configs=configs)
    m = ev.metrics
    for name in ("soft-prompt", "in-context"):
        key = name.replace("-", "_")
        assert m[f"{key}_signal"] == ev.attacks[name].signal
        assert ev.verdict.signals[name]["threshold"] == THRESHOLD
        assert ev.verdict.signals[name]["value"] == ev.attacks[name].signal
    assert m["in_context_arm"] == "forget statements" and ev.attacks["in-context"].arms[0].steps == [0, 1, 2]
    path = ev.save(tmp_path / "metrics.json")
    again = Evaluation.load(path)
    assert again.attacks["soft-prompt"].to_dict() == ev.attacks["soft-prompt"].to_dict()
    assert json.loads(path.read_text())["attacks"]["in-context"]["settings"]["statements"] == 2
    assert len(plot_attacks(ev).data) >= 6  # per arm: attack, never-known, prior-only (+ original curve)
    loc = make_localization(factworld, "mlps-[3]", [MLP(3)])
    run = MethodRun("probe", 0, loc, ev.to_dict(), {})
    summary = Comparison(CompareSettings(methods=["probe"]), {"probe": {}}, {}, [run], 1.0, 1, "pool", {})
    titles = [t for t, _ in attack_sections(summary)]
    assert titles == [f"Attack: {n} (held-out accuracy vs its control)" for n in ("soft-prompt", "in-context")]
    assert inspect.signature(evaluate).parameters["attacks"].default == ()  # default: no attack runs
    plain = Evaluation(behaviour=ev.behaviour, original_behaviour=ev.original_behaviour)
    plain.verdict = verdict_of(plain, small)
    assert plain.metrics["soft_prompt_signal"] is None and "not run" in plain.metrics["soft_prompt_note"]
    assert "soft-prompt" not in plain.verdict.signals


def test_difference_ci_of_independent_samples():
    iv = difference_ci([1, 1, 1, 0], [0, 0, 0, 1], seed=0)
    assert iv.mean == pytest.approx(0.5) and iv.low < 0.5 < iv.high and iv.n == 8
    assert difference_ci([1.0], [0.0, 1.0]).low is None
    assert difference_ci([], [1.0]).mean is None
    assert np.isclose(difference_ci([0.2, 0.4], [0.2, 0.4]).mean, 0.0)
