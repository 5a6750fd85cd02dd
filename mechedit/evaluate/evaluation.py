"""``evaluate``: behaviour, relearning attack, latent probes, representation diagnostics and the verdict of one edit.

``metrics.json`` (``Evaluation.save``) holds the headline keys (``METRIC_KEYS``) at the top level — each a number in
[0, 1] or ``null`` when there was nothing to measure (never 0 for "not measured") — plus the renormalized probabilities
and the sections ``behaviour``, ``original_behaviour``, ``relearn``, ``attacks``, ``latent``, ``diagnostics``,
``verdict_inputs`` and ``extra`` (free-form: facts source, MCQ shots, timings) with the per-layer lists, curves and
every number the verdict used.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from mechedit.edit import EditError
from mechedit.edit.fluency import fluency_split
from mechedit.edit.split import (
    EVAL_FRACTION,
    MaintainSplit,
    maintain_of,
    recorded_retain_keys,
    split_from_keys,
    split_maintain,
)
from mechedit.evaluate.attacks import ATTACKS, AttackResult, run_attacks
from mechedit.evaluate.behaviour import Behaviour, choose_shots, fluency_kl, next_token_kl, score_behaviour
from mechedit.evaluate.copying import clone_model
from mechedit.evaluate.diagnostics import Diagnostics, diagnose
from mechedit.evaluate.latent import LatentProbes, latent_probes
from mechedit.evaluate.relearn import RelearnConfig, RelearnResult, relearn_attack
from mechedit.evaluate.verdict import Verdict, VerdictRule, decide
from mechedit.facts import FactError, FactSet
from mechedit.memo import OriginalMemo
from mechedit.models import fingerprint, model_info
from mechedit.results import SavedResult
from mechedit.stats import chance_accuracy
from mechedit.validate import atomic_write_text
from patching.model import Model, arch

# the headline metric keys of metrics.json, in order (PROB_KEYS: the renormalized probabilities and more)
METRIC_KEYS = ("forget_accuracy", "edit_accuracy", "maintain_accuracy", "paraphrase_edit_accuracy",
              "mcq_forget_error", "mcq_edit_accuracy", "neighborhood_accuracy", "relearn_accuracy",
              "latent_probe_accuracy", "fluency_kl", "verdict", "n_params_trained")
PROB_KEYS = ("forget_prob", "edit_prob", "maintain_prob", "paraphrase_forget_accuracy", "paraphrase_forget_prob",
             "paraphrase_edit_prob", "paraphrase_maintain_accuracy", "mcq_forget_prob", "mcq_edit_prob",
             "mcq_maintain_accuracy", "neighborhood_prob")


@dataclass
class Evaluation(SavedResult):
    """Everything ``evaluate`` measured; ``to_dict`` is the metrics.json layout."""

    behaviour: Behaviour
    original_behaviour: Behaviour | None = None  # the unedited model on the same facts (None without one)
    fluency_kl: float | None = None  # mean next-token KL(original ‖ edited) on held-out generic text
    relearn: RelearnResult | None = None
    latent: LatentProbes | None = None
    diagnostics: Diagnostics | None = None
    verdict: Verdict | None = None
    n_params_trained: int | None = None
    fluency: dict | None = None  # held-out per-text KL, the training-half KL, text counts, source, note
    attacks: dict[str, AttackResult] | None = None  # input-side attacks that ran (``mechedit.evaluate.attacks``)
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "metrics.json"

    @property
    def latent_probe_accuracy(self) -> list[float] | None:
        """Per layer: original-model probes' true-answer accuracy on the edited facts (best of the two positions)."""
        if self.latent is None or self.latent.original_true is None:
            return None
        return [max(v) for v in zip(*self.latent.original_true.values(), strict=True)]

    @property
    def metrics(self) -> dict:
        """The flat metrics: the documented metric keys, then renormalized probabilities and extra accuracies."""
        b = self.behaviour
        out = {k: getattr(b, k) for k in METRIC_KEYS[:7]}
        out["relearn_accuracy"] = None if self.relearn is None else self.relearn.relearn_accuracy
        out["latent_probe_accuracy"] = self.latent_probe_accuracy
        out["fluency_kl"] = self.fluency_kl
        out["verdict"] = None if self.verdict is None else self.verdict.verdict
        out["n_params_trained"] = self.n_params_trained
        out.update({k: getattr(b, k) for k in PROB_KEYS})
        r = self.relearn
        out["relearn_recovery"] = None if r is None else r.recovery  # above the prior-only control
        out["relearn_recovery_ci"] = None if r is None else r.recovery_ci
        out["relearn_recovery_uniform"] = None if r is None else r.recovery_uniform
        out["relearn_control_accuracy"] = None if r is None else r.control_relearn_accuracy
        out["relearn_maintain_accuracy"] = None if r is None else r.maintain_accuracy  # per step of the attack
        out["relearn_steps"] = None if r is None else r.steps
        out["relearn_mode"] = None if r is None else r.config.get("mode")
        out["relearn_config"] = None if r is None else r.config
        out.update(latent_summary(self.latent))
        out["cka_min"] = None if self.diagnostics is None else float(min(self.diagnostics.cka))
        out["verdict_reason"] = None if self.verdict is None else "; ".join(self.verdict.reasons)
        out["maintain_accuracy_train"] = b.maintain_accuracy_train  # the editor's retain facts (training set)
        out["fluency_kl_train"] = None if self.fluency is None else self.fluency.get("train")
        out.update(attack_summary(self.attacks))
        return out

    def to_dict(self) -> dict:
        """The metrics.json layout (JSON-serializable)."""
        d = dict(self.metrics)
        d["behaviour"] = self.behaviour.to_dict()
        d["original_behaviour"] = None if self.original_behaviour is None else self.original_behaviour.to_dict()
        d["relearn"] = None if self.relearn is None else self.relearn.to_dict()
        d["attacks"] = None if self.attacks is None else {k: a.to_dict() for k, a in self.attacks.items()}
        d["latent"] = None if self.latent is None else self.latent.to_dict()
        d["diagnostics"] = None if self.diagnostics is None else self.diagnostics.to_dict()
        d["verdict_inputs"] = None if self.verdict is None else self.verdict.to_dict()
        d["fluency"] = self.fluency
        d["extra"] = self.extra
        return _jsonable(d)

    def save(self, path: str | Path) -> Path:
        """Write metrics.json into directory ``path`` or to the ``.json`` file ``path`` (atomically)."""
        return atomic_write_text(self.file_in(path), self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        """Inverse of ``to_dict`` (the relearned model is not stored)."""
        def build(kind, value):
            return None if value is None else kind(**value)

        return cls(
            behaviour=Behaviour(**d["behaviour"]), original_behaviour=build(Behaviour, d.get("original_behaviour")),
            fluency_kl=d.get("fluency_kl"), relearn=build(RelearnResult, d.get("relearn")),
            latent=build(LatentProbes, d.get("latent")), diagnostics=build(Diagnostics, d.get("diagnostics")),
            verdict=build(Verdict, d.get("verdict_inputs")), n_params_trained=d.get("n_params_trained"),
            fluency=d.get("fluency"),
            attacks=None if d.get("attacks") is None else {k: AttackResult.from_dict(a)
                                                           for k, a in d["attacks"].items()},
            extra=d.get("extra", d.get("meta", {})),  # "meta": files written before the field was renamed
        )


def attack_summary(attacks: Mapping[str, AttackResult] | None) -> dict:
    """Flat keys per attack that can run (``soft_prompt_signal``, ``..._accuracy``, ``..._control``, ...): null
    when the attack was not run or could not measure (its note says why)."""
    out = {}
    for name in ATTACKS:
        r = (attacks or {}).get(name)
        summary = r.summary() if r is not None else {"note": "not run (evaluate --attacks)"}
        for key in ("signal", "signal_ci", "accuracy", "control", "control_kind", "arm", "note"):
            out[f"{name.replace('-', '_')}_{key}"] = summary.get(key)
    return out


def latent_summary(lat: LatentProbes | None) -> dict:
    """Flat latent keys: the selected probe's after/before accuracy (with 95 % CI), kind, floor, or the reason."""
    sel = None if lat is None else lat.selected
    ci = None if sel is None else [sel["after"]["low"], sel["after"]["high"]]
    return {
        "latent_kind": None if lat is None else (dict(lat.kind) or None),
        "latent_selected": None if sel is None else {"position": sel["position"], "layer": sel["layer"]},
        "latent_after": None if sel is None else sel["after"]["mean"], "latent_after_ci": ci,
        "latent_before": None if sel is None else sel["before"]["mean"],
        "latent_untouched_floor": None if lat is None else lat.untouched_floor,
        "latent_excluded_layers": None if lat is None else lat.excluded_layers,
        "latent_reason": "latent probes not run (disabled, or no original model)" if lat is None else lat.reason,
    }


def _jsonable(x):
    """Replace NaN by None and numpy scalars by Python numbers, recursively."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def resolve_models(model: Model, edit=None, original: Model | None = None) -> tuple[object, object | None, bool]:
    """(edited, original, made_copy): which model is which, applying or reverting ``edit`` on a **copy**.

    With ``edit``, ``model`` may be its base model (an edited copy is made) or already carry it (the original
    is rebuilt on a copy by reverting); any other model raises EditError naming both fingerprints.
    """
    if edit is None:
        if original is not None and arch(original) != arch(model):
            raise ValueError(f"original and edited models differ in architecture: {arch(original)} vs "
                             f"{arch(model)}")
        return model, original, False

    fp = fingerprint(model)
    if original is not None and fingerprint(original) != edit.base_fingerprint:
        raise EditError(f"the given original model (fingerprint {fingerprint(original)}) is not the base of this "
                        f"edit (made on {edit.base_fingerprint})")
    if fp == edit.base_fingerprint:
        edited = clone_model(model)
        edit.apply(edited)
        return edited, original if original is not None else model, True
    if fp == edit.edited_fingerprint:
        if original is None:
            original = clone_model(model)
            edit.revert(original)
        return model, original, True
    raise EditError(f"this edit was made on a model with fingerprint {edit.base_fingerprint}, but the model to "
                    f"evaluate has fingerprint {fp} (a different model, or one carrying other changes); load the "
                    f"edit's base model")


def evaluate(
    model: Model, facts: FactSet, edit=None, original: Model | None = None, *, seed: int = 0, relearn: bool = False,
    relearn_config: RelearnConfig | None = None, latent: bool = True, diagnostics: bool = False,
    fluency_text: str = "auto", n_shots: int | None = None, max_maintain: int | None = 256,
    rule: VerdictRule | None = None, batch_size: int = 64, progress: bool = True,
    original_behaviour: Behaviour | None = None, latent_train: FactSet | None = None,
    retain_keys: Collection[str] | None = None, attacks: Sequence[str] = (),
    attack_configs: Mapping[str, object] | None = None, memo: OriginalMemo | None = None,
) -> Evaluation:
    """Evaluate an edit of ``facts`` (forget/edit facts marked) — never modifying the caller's models.

    ``edit`` (an EditResult) with ``model`` its base model evaluates an edited copy against ``model``; without
    ``edit``, ``model`` is the edited model and ``original`` (optional) the unedited one. ``n_shots=None``: the
    few-shot MCQ prefix (0 or 3 maintain facts) that scores best on the original model. ``original_behaviour``:
    the original model's scores from an earlier call with the same facts, seed and ``n_shots`` (reused, not
    recomputed, when comparing several edits of one fact set). ``latent_train``: more facts to train the latent
    probes on (forget subjects excluded; see ``mechedit.evaluate.latent``). ``retain_keys``: the maintain facts
    (``fact_key``) the editor trained on (default: recorded in ``edit``, else the editor's seeded rule under
    ``seed``); maintain accuracy and fluency KL are measured on the other, held-out half. Sections: behaviour
    (always), fluency and latent probes (need the original), the relearning attack (``relearn=True``, on a
    copy), the input-side attacks named in ``attacks`` ("soft-prompt", "in-context"; configs by name in
    ``attack_configs``; they need the original model), representation diagnostics (``diagnostics=True``), then
    the verdict (``mechedit.evaluate.verdict``). ``memo``: an ``OriginalMemo`` shared by evaluations of several
    edits of the same facts against the same original model (its features, probes, Fisher and fluency
    log-probabilities are computed once).
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    edited, original, _ = resolve_models(model, edit, original)

    def timed(name, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    if n_shots is None:  # few-shot MCQ prefix only if it helps the original model (chosen before the edit counts)
        n_shots, shot_accs = choose_shots(original if original is not None else edited, facts, seed=seed)
        ev_meta = {"mcq_shots": n_shots, "mcq_shot_choice": {str(k): v for k, v in shot_accs.items()}}
    else:
        ev_meta = {"mcq_shots": n_shots}
    split, split_seed, fraction = heldout_split(facts, edit, seed, retain_keys)
    ev_meta["heldout"] = {"seed": split_seed, "fraction": fraction, "source": "recorded" if (
        retain_keys is not None or (edit is not None and recorded_retain_keys(edit.extra) is not None)) else "rule",
        "n_retain": 0 if split.retain is None else len(split.retain),
        "n_evaluation": 0 if split.evaluation is None else len(split.evaluation), "note": split.note}
    if edit is not None and retain_keys is None and recorded_retain_keys(edit.extra) is None:
        ev_meta["heldout"]["note"] = ("this edit recorded no retain set (made before edits held maintain facts "
                                      "out, training on all of them): maintain_accuracy and fluency_kl are not "
                                      "held-out numbers for it")
    kw = dict(seed=seed, n_shots=n_shots, max_maintain=max_maintain, batch_size=batch_size, progress=progress,
              split=split)
    ev = Evaluation(behaviour=timed("behaviour", score_behaviour, edited, facts, **kw), extra=ev_meta)
    if original is not None:
        ev.original_behaviour = original_behaviour or timed("original_behaviour", score_behaviour, original, facts,
                                                            **kw)
        if fluency_text == "auto" and edit is not None:
            fluency_text = edit.config.fluency_text  # the editor's own source, split the editor's way
        ev.fluency = timed("fluency", heldout_fluency, original, edited, split, fluency_text, split_seed, fraction,
                           progress=progress, memo=memo)
        ev.fluency_kl = ev.fluency["heldout"]
        ev.extra["fluency_text"] = ev.fluency["source"]
    relearned = None
    if relearn:
        try:
            out = timed("relearn", relearn_attack, edited, facts, relearn_config, original=original, seed=seed,
                        keep_model=diagnostics, progress=progress)
            ev.relearn, relearned = out if diagnostics else (out, None)
        except FactError as e:  # too few forget facts to split: the signal is null, the evaluation goes on
            ev.extra["relearn_note"] = str(e)
    if attacks:
        ev.attacks = {}
        for name in attacks:  # timed one by one; each returns a null signal with a note when it cannot measure
            ev.attacks.update(timed(f"attack:{name}", run_attacks, [name], edited, facts, original=original,
                                    seed=seed, configs=attack_configs, progress=progress))
    if latent and original is not None:
        first = None if edit is None else min((c.layer for c in edit.localization.components), default=None)
        ev.latent = timed("latent", latent_probes, original, edited, facts, seed=seed, progress=progress,
                           train_facts=latent_train, first_edited_layer=first, memo=memo)
    if diagnostics and original is not None:
        ev.diagnostics = timed("diagnostics", diagnose, original, edited, facts.forget_set(),
                               relearned=relearned, progress=progress, memo=memo)
    relearned = None  # free the relearned copy
    ev.verdict = verdict_of(ev, facts, rule)
    ev.n_params_trained = None if edit is None else int(edit.n_params_trained)
    ev.extra.update({
        "model": model_info(original if original is not None else edited).name,
        "base_fingerprint": None if original is None else fingerprint(original),
        "edited_fingerprint": fingerprint(edited), "facts": facts.name, "n_facts": len(facts), "seed": seed,
        "objective": None if edit is None else edit.objective,
        "localization": None if edit is None else edit.localization.method,
        "timings_s": {**timings, "total": round(time.perf_counter() - t_all, 2)},
    })
    return ev


def heldout_split(facts: FactSet, edit=None, seed: int = 0, retain_keys: Collection[str] | None = None
                  ) -> tuple[MaintainSplit, int, float]:
    """(the editor's retain / held-out split of ``facts``' maintain facts, its seed, its held-out fraction)."""
    split_seed = seed if edit is None else edit.config.seed
    fraction = EVAL_FRACTION if edit is None else edit.config.eval_fraction
    if retain_keys is None and edit is not None:
        retain_keys = recorded_retain_keys(edit.extra)
    maintain = maintain_of(facts)
    if retain_keys is not None:
        return split_from_keys(maintain, retain_keys), split_seed, fraction
    return split_maintain(maintain, split_seed, fraction), split_seed, fraction


def heldout_fluency(original: Model, edited: Model, split: MaintainSplit, source: str, seed: int, fraction: float, *,
                    progress: bool = True, memo: OriginalMemo | None = None) -> dict:
    """Fluency KL on the held-out texts (``heldout``, per text in ``heldout_per_text``) and on the training half."""
    train, held, desc = fluency_split(original, split, source, seed, fraction)
    per_text = next_token_kl(original, edited, held, progress=progress, memo=memo).tolist() if held else None
    out = {"source": desc, "heldout": None if per_text is None else float(np.mean(per_text)),
           "heldout_per_text": per_text, "n_heldout": len(held), "n_train": len(train),
           "train": fluency_kl(original, edited, train, progress=progress, memo=memo) if train else None,
           "note": None if held else "no held-out fluency text (too few texts or maintain facts to split)"}
    return out


def verdict_of(ev: Evaluation, facts: FactSet, rule: VerdictRule | None = None) -> Verdict:
    """Feed an evaluation's numbers to the verdict rule."""
    forget = facts.forget_set()
    chance = chance_accuracy([len(f.candidates) for f in forget])
    lat_after = lat_before = lat_chance = lat_detail = None
    if ev.latent is not None:  # the probe chosen on held-out maintain facts, at or after the first edited layer
        lat = ev.latent
        lat_after, lat_before, lat_chance = lat.after, lat.before, lat.chance
        lat_detail = {"selected": lat.selected, "kind": lat.kind, "untouched_floor": lat.untouched_floor,
                      "excluded_layers": lat.excluded_layers, "first_edited_layer": lat.first_edited_layer,
                      "reason": lat.reason}
    mean_cka = None if ev.diagnostics is None else float(np.mean(ev.diagnostics.cka))
    formats = behaviour_formats(ev, facts)
    return decide(
        forget_accuracy=ev.behaviour.forget_accuracy,
        original_forget_accuracy=None if ev.original_behaviour is None else ev.original_behaviour.forget_accuracy,
        chance=chance, relearn_recovery=None if ev.relearn is None else ev.relearn.recovery,
        attacks={k: {"value": a.signal, "detail": a.summary()} for k, a in (ev.attacks or {}).items()},
        latent_after=lat_after, latent_before=lat_before, latent_chance=lat_chance, latent_detail=lat_detail,
        mean_cka=mean_cka, rule=rule, formats=formats,
    )


def behaviour_formats(ev: Evaluation, facts: FactSet) -> dict[str, dict]:
    """Paraphrase and MCQ true-answer accuracy of the edited and original model, each with its own chance level."""
    forget = facts.forget_set()
    b, o = ev.behaviour, ev.original_behaviour
    with_para = [f for f in forget if f.paraphrases]
    out: dict[str, dict] = {}
    if with_para:
        out["paraphrase"] = {"accuracy": b.paraphrase_forget_accuracy,
                             "original": None if o is None else o.paraphrase_forget_accuracy,
                             "chance": chance_accuracy([len(f.candidates) for f in with_para])}

    def mcq_true(x: Behaviour | None) -> float | None:
        return None if x is None or x.mcq_forget_error is None else 1.0 - x.mcq_forget_error

    out["mcq"] = {"accuracy": mcq_true(b), "original": mcq_true(o),  # option count does not depend on the seed
                  "chance": chance_accuracy([len(f.mcq()[1]) for f in forget])}
    return out
