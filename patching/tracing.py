"""Causal tracing (ROME, Meng et al. 2022): noise the subject's embeddings, restore one component at a time.

The corrupted run adds Gaussian noise of std ``3 × std(embeddings of the subject tokens)`` to every
subject token's embedding; each component then gets its clean value back (denoising activation patching)
and the metric is the true answer's probability. ``indirect_effects`` are ROME's IE:
``p(answer | corrupted, component restored) − p(answer | corrupted)``, averaged over ``n_samples``
seeded noise draws.
"""

from __future__ import annotations

from jaxtyping import Bool, Int
from torch import Tensor

from patching.activation import Components, activation_patch
from patching.corrupt import gaussian_noise
from patching.metrics import answer_prob
from patching.model import Model
from patching.result import PatchResult


def causal_trace(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
    subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"], answer_ids: Int[Tensor, " batch"],
    *, components: Components = "mlps", noise_scale: float | None = None, multiplier: float = 3.0,
    positions: Bool[Tensor, "batch pos"] | None = None, n_samples: int = 1, seed: int = 0,
    max_rows: int | None = None, progress: bool = False,
) -> PatchResult:
    """Restore each component under subject noise; values are mean true-answer probabilities over samples."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    metric = answer_prob(answer_ids)
    results = []
    for k in range(n_samples):
        noise = gaussian_noise(model, input_ids, subject_start, subject_last, scale=noise_scale,
                               multiplier=multiplier, seed=seed + k)
        results.append(activation_patch(model, input_ids, attention_mask, noise, metric, components=components,
                                        direction="denoising", positions=positions, max_rows=max_rows,
                                        progress=progress))
    n = len(results)
    values = [sum(r.values[i] for r in results) / n for i in range(len(results[0].labels))]
    corrupt = sum(r.corrupt for r in results) / n
    extra = {"noise_scale": noise.scale, "n_samples": n_samples, "seed": seed,
             "indirect_effects": [v - corrupt for v in values]}
    return PatchResult("causal-tracing", results[0].labels, values, results[0].clean, corrupt, "denoising", extra)
