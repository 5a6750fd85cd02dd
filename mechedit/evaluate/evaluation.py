"""``evaluate``: behaviour, relearning attack, latent probes, representation diagnostics and the verdict of one edit.

``metrics.json`` (``Evaluation.save``) holds the headline keys (``METRIC_KEYS``) at the top level — each a number in
[0, 1] or ``null`` when there was nothing to measure (never 0 for "not measured") — plus the renormalized probabilities
and the sections ``behaviour``, ``original_behaviour``, ``relearn``, ``latent``, ``diagnostics``, ``verdict_inputs``
and ``extra`` (free-form: facts source, MCQ shots, timings) with the per-layer lists, curves and every number
the verdict used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from mechedit.edit import EditError
from mechedit.edit.fluency import fluency_texts
from mechedit.evaluate.behaviour import Behaviour, choose_shots, fluency_kl, score_behaviour
from mechedit.evaluate.copying import clone_model
from mechedit.evaluate.diagnostics import Diagnostics, diagnose
from mechedit.evaluate.latent import LatentProbes, latent_probes
from mechedit.evaluate.relearn import RelearnConfig, RelearnResult, relearn_attack
from mechedit.evaluate.verdict import Verdict, VerdictRule, decide
from mechedit.facts import FactSet
from mechedit.models import fingerprint, model_info
from mechedit.results import SavedResult
from mechedit.stats import chance_accuracy
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
    fluency_kl: float | None = None  # mean next-token KL(original ‖ edited) on generic text
    relearn: RelearnResult | None = None
    latent: LatentProbes | None = None
    diagnostics: Diagnostics | None = None
    verdict: Verdict | None = None
    n_params_trained: int | None = None
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "metrics.json"

    @property
    def latent_probe_accuracy(self) -> list[float] | None:
        """Per layer: original-model probes' true-answer accuracy on the edited facts (best of the two positions)."""
        if self.latent is None:
            return None
        return [max(v) for v in zip(*self.latent.original_true.values(), strict=True)]

    @property
    def metrics(self) -> dict:
        """The flat metrics: METRIC_KEYS, then renormalized probabilities and extra accuracies."""
        b = self.behaviour
        out = {k: getattr(b, k) for k in METRIC_KEYS[:7]}
        out["relearn_accuracy"] = None if self.relearn is None else self.relearn.relearn_accuracy
        out["latent_probe_accuracy"] = self.latent_probe_accuracy
        out["fluency_kl"] = self.fluency_kl
        out["verdict"] = None if self.verdict is None else self.verdict.verdict
        out["n_params_trained"] = self.n_params_trained
        out.update({k: getattr(b, k) for k in PROB_KEYS})
        out["relearn_recovery"] = None if self.relearn is None else self.relearn.recovery
        out["cka_min"] = None if self.diagnostics is None else float(min(self.diagnostics.cka))
        out["verdict_reason"] = None if self.verdict is None else "; ".join(self.verdict.reasons)
        return out

    def to_dict(self) -> dict:
        """The metrics.json layout (JSON-serializable)."""
        d = dict(self.metrics)
        d["behaviour"] = self.behaviour.to_dict()
        d["original_behaviour"] = None if self.original_behaviour is None else self.original_behaviour.to_dict()
        d["relearn"] = None if self.relearn is None else self.relearn.to_dict()
        d["latent"] = None if self.latent is None else self.latent.to_dict()
        d["diagnostics"] = None if self.diagnostics is None else self.diagnostics.to_dict()
        d["verdict_inputs"] = None if self.verdict is None else self.verdict.to_dict()
        d["extra"] = self.extra
        return _jsonable(d)

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
            extra=d.get("extra", d.get("meta", {})),  # "meta": files written before the field was renamed
        )


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
) -> Evaluation:
    """Evaluate an edit of ``facts`` (forget/edit facts marked) — never modifying the caller's models.

    ``edit`` (an EditResult) with ``model`` its base model evaluates an edited copy against ``model``; without
    ``edit``, ``model`` is the edited model and ``original`` (optional) the unedited one. ``n_shots=None``: the
    few-shot MCQ prefix (0 or 3 maintain facts) that scores best on the original model. ``original_behaviour``:
    the original model's scores from an earlier call with the same facts, seed and ``n_shots`` (reused, not
    recomputed, when comparing several edits of one fact set). ``latent_train``: more facts to train the latent
    probes on (forget subjects excluded; see ``mechedit.evaluate.latent``). Sections: behaviour
    (always), fluency and latent probes (need the original), the relearning attack (``relearn=True``, on a
    copy), representation diagnostics (``diagnostics=True``), then the verdict (``mechedit.evaluate.verdict``).
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
    kw = dict(seed=seed, n_shots=n_shots, max_maintain=max_maintain, batch_size=batch_size, progress=progress)
    ev = Evaluation(behaviour=timed("behaviour", score_behaviour, edited, facts, **kw), extra=ev_meta)
    if original is not None:
        ev.original_behaviour = original_behaviour or timed("original_behaviour", score_behaviour, original, facts,
                                                            **kw)

        maintain = facts.maintain_set() if len(facts.forget_set()) < len(facts) else None
        texts, source = fluency_texts(original, maintain, fluency_text, seed)
        ev.fluency_kl = timed("fluency", fluency_kl, original, edited, texts, progress=progress)
        ev.extra["fluency_text"] = source
    relearned = None  # the relearned copy, kept only for the diagnostics (results never hold live models)
    if relearn:
        ev.relearn, relearned = timed("relearn", relearn_attack, edited, facts, relearn_config, original=original,
                                      seed=seed, keep_model=True, progress=progress)
        relearned = relearned if diagnostics else None
    if latent and original is not None:
        ev.latent = timed("latent", latent_probes, original, edited, facts, seed=seed, progress=progress,
                           train_facts=latent_train)
    if diagnostics and original is not None:

        ev.diagnostics = timed("diagnostics", diagnose, original, edited, facts.forget_set(),
                               relearned=relearned, progress=progress)
    del relearned  # free the relearned copy
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


def verdict_of(ev: Evaluation, facts: FactSet, rule: VerdictRule | None = None) -> Verdict:
    """Feed an evaluation's numbers to the verdict rule."""
    forget = facts.forget_set()
    chance = chance_accuracy([len(f.candidates) for f in forget])
    lat_after = lat_before = lat_chance = None
    if ev.latent is not None:
        lat_after = ev.latent.best("original_true")
        if ev.latent.fresh_true is not None:
            lat_after = max(lat_after, ev.latent.best("fresh_true"))
        lat_before, lat_chance = ev.latent.best("original_before"), ev.latent.chance
    mean_cka = None if ev.diagnostics is None else float(np.mean(ev.diagnostics.cka))
    return decide(
        forget_accuracy=ev.behaviour.forget_accuracy,
        original_forget_accuracy=None if ev.original_behaviour is None else ev.original_behaviour.forget_accuracy,
        chance=chance, relearn_recovery=None if ev.relearn is None else ev.relearn.recovery,
        latent_after=lat_after, latent_before=lat_before, latent_chance=lat_chance, mean_cka=mean_cka, rule=rule,
    )
