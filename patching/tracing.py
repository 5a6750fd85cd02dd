"""Causal tracing (ROME, Meng et al. 2022): noise the subject's embeddings, restore clean states, watch the answer.

The corrupted run adds Gaussian noise of std ``3 × std(embeddings of the subject tokens)`` to every subject
token's embedding. Two tracers restore clean values into it (denoising) and measure the true answer's
probability; indirect effects are ROME's IE, ``p(answer | corrupted, restored) − p(answer | corrupted)``,
averaged over ``n_samples`` noise draws.

- ``rome_trace`` is ROME's ``trace_with_repatch`` with ``kind="mlp"``: for layer L it restores the clean MLP
  outputs of the window of layers ``max(0, L − window // 2) .. min(n_layers, L + ceil(window / 2)) − 1``
  (ROME's ``range(max(0, L - window // 2), min(n, L - (-window // 2)))``; window 10: L−5 .. L+4) at ONE
  token per prompt (``token``; the localizer passes the last subject token), each restored state replacing
  the corrupted one so later restored layers see earlier ones. One label ``mlp.L`` per layer.
- ``causal_trace`` restores one component (MLP or head) alone, at every column or at ``positions``: the
  whole-component variant, cheaper and coarser.

Noise draws are independent across seeds: draw ``k`` of seed ``s`` uses the generator seed
``noise_seed(s, k)`` (a SeedSequence of ``(s, k)``), so seeds never share draws.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from patching.activation import Components, activation_patch
from patching.corrupt import gaussian_noise
from patching.metrics import answer_prob, evaluate
from patching.model import Model, arch, mlp_label, run_from
from patching.result import PatchResult
from patching.runs import make_runs


def noise_seed(seed: int, k: int) -> int:
    """The generator seed of noise draw ``k`` under ``seed``: distinct for every (seed, draw) pair."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def window_layers(layer: int, n_layers: int, window: int) -> range:
    """ROME's window of layers restored around ``layer``: ``range(max(0, L - w//2), min(n, L - (-w//2)))``."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def rome_trace(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
    subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"], answer_ids: Int[Tensor, " batch"],
    *, token: Int[Tensor, " batch"] | None = None, window: int = 10, noise_scale: float | None = None,
    multiplier: float = 3.0, n_samples: int = 10, seed: int = 0, progress: bool = False,
) -> PatchResult:
    """ROME's MLP trace: per layer, restore the clean MLP outputs of a window of layers at ``token`` (default:
    the last subject token); values are mean true-answer probabilities over ``n_samples`` noise draws."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    a = arch(model)
    B = input_ids.shape[0]
    token = torch.as_tensor(subject_last if token is None else token).long()
    if token.shape != (B,) or int(token.min()) < 0 or int(token.max()) >= input_ids.shape[1]:
        raise ValueError(f"token must hold one column in [0, {input_ids.shape[1]}) per prompt")
    rows = torch.arange(B)
    metric = answer_prob(answer_ids)
    names = [f"blocks.{i}.hook_mlp_out" for i in range(a.n_layers)] + \
            [f"blocks.{i}.hook_resid_pre" for i in range(a.n_layers)]
    labels = [mlp_label(layer) for layer in range(a.n_layers)]
    sums = [0.0] * a.n_layers
    corrupt_sum, clean, scale = 0.0, 0.0, None
    work = [(k, layer) for k in range(n_samples) for layer in range(a.n_layers)]
    bar = tqdm(total=len(work), desc="causal tracing", disable=not progress, leave=False)
    for k in range(n_samples):
        noise = gaussian_noise(model, input_ids, subject_start, subject_last, scale=noise_scale,
                               multiplier=multiplier, seed=noise_seed(seed, k))
        scale = noise.scale
        runs = make_runs(model, input_ids, attention_mask, noise, metric, "denoising", names)
        clean, corrupt_sum = runs.clean, corrupt_sum + runs.corrupt
        for layer in range(a.n_layers):
            span = window_layers(layer, a.n_layers, window)

            def restore(x, hook, clean_out=None):
                x = x.clone()
                x[rows, token] = clean_out[rows, token].to(x.dtype)
                return x

            hooks = [(f"blocks.{i}.hook_mlp_out",
                      lambda x, hook, c=runs.source.cache[f"blocks.{i}.hook_mlp_out"]: restore(x, hook, c))
                     for i in span]
            start = span.start
            with torch.no_grad():
                logits = run_from(model, runs.base, start, runs.base.cache[f"blocks.{start}.hook_resid_pre"],
                                  fwd_hooks=hooks)
            sums[layer] += float(evaluate(metric, logits))
            bar.update(1)
    bar.close()
    values = [s / n_samples for s in sums]
    corrupt = corrupt_sum / n_samples
    extra = {"noise_scale": scale, "n_samples": n_samples, "seed": seed, "window": window, "kind": "mlp",
             "indirect_effects": [v - corrupt for v in values]}
    return PatchResult("causal-tracing", labels, values, clean, corrupt, "denoising", extra)


def causal_trace(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
    subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"], answer_ids: Int[Tensor, " batch"],
    *, components: Components = "mlps", noise_scale: float | None = None, multiplier: float = 3.0,
    positions: Bool[Tensor, "batch pos"] | None = None, n_samples: int = 1, seed: int = 0,
    max_rows: int | None = None, progress: bool = False,
) -> PatchResult:
    """Restore each component alone under subject noise; values are mean true-answer probabilities over samples."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    metric = answer_prob(answer_ids)
    results = []
    for k in range(n_samples):
        noise = gaussian_noise(model, input_ids, subject_start, subject_last, scale=noise_scale,
                               multiplier=multiplier, seed=noise_seed(seed, k))
        results.append(activation_patch(model, input_ids, attention_mask, noise, metric, components=components,
                                        direction="denoising", positions=positions, max_rows=max_rows,
                                        progress=progress))
    n = len(results)
    values = [sum(r.values[i] for r in results) / n for i in range(len(results[0].labels))]
    corrupt = sum(r.corrupt for r in results) / n
    extra = {"noise_scale": noise.scale, "n_samples": n_samples, "seed": seed,
             "indirect_effects": [v - corrupt for v in values]}
    return PatchResult("causal-tracing", results[0].labels, values, results[0].clean, corrupt, "denoising", extra)
