"""Verification of an edit: is the fact gone, or only hidden?

``evaluate(model, facts, edit=None, original=None, ...) -> Evaluation`` measures behaviour (prompt, paraphrase,
few-shot MCQ, neighbourhood, fluency), runs the relearning attack on a copy, probes the latent true answer at
every layer, computes representation diagnostics (``mechedit.evaluate.diagnostics``) and gives a ``removed`` /
``suppressed`` verdict with every number it used. ``Evaluation.save(path)`` writes metrics.json.
"""

from mechedit.evaluate.behaviour import Behaviour, fluency_kl, score_behaviour
from mechedit.evaluate.evaluation import Evaluation, evaluate, resolve_models
from mechedit.evaluate.latent import LatentProbes, latent_probes
from mechedit.evaluate.relearn import RelearnConfig, RelearnResult, relearn_attack
from mechedit.evaluate.verdict import Verdict, VerdictRule, decide

__all__ = [
    "evaluate", "Evaluation", "resolve_models", "Behaviour", "score_behaviour", "fluency_kl", "LatentProbes",
    "latent_probes", "RelearnConfig", "RelearnResult", "relearn_attack", "Verdict", "VerdictRule", "decide",
]
