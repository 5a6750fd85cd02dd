"""Activation, path and attribution patching and causal tracing, batched, for TransformerLens bridges.

Depends only on torch / transformer_lens (+ jaxtyping, tqdm), never on ``mechedit``. Every function takes
(model, clean ``input_ids`` + ``attention_mask`` (left-padded), a corruption (corrupted ids of the same
shape, or a ``Noise`` spec), a metric over last-position logits) and returns a ``PatchResult``. Components
are labelled ``head.L.H``, ``mlp.L`` and ``resid.L.P``. ``patching.reference`` holds one-forward-per-
component implementations that tests check the batched ones against.
"""

from patching.activation import activation_patch
from patching.attribution import attribution_patch
from patching.corrupt import (
    Corruption,
    Noise,
    embedding_std,
    gaussian_noise,
    random_subject_tokens,
    subject_mask,
    swap_subjects,
)
from patching.metrics import Metric, answer_prob, logit_diff
from patching.model import Arch, arch, head_label, mlp_label, resid_label
from patching.path import path_hooks, path_patch
from patching.result import PatchResult, UnchangedMetricWarning
from patching.tracing import causal_trace, rome_trace

__all__ = [
    "Arch", "Corruption", "Metric", "Noise", "PatchResult", "UnchangedMetricWarning", "activation_patch", "answer_prob",
    "arch", "attribution_patch", "causal_trace", "embedding_std", "gaussian_noise", "head_label", "logit_diff",
    "mlp_label", "rome_trace", "path_hooks", "path_patch", "random_subject_tokens", "resid_label", "subject_mask",
    "swap_subjects",
]
