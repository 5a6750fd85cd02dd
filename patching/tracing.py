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

from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from patching.activation import Components, activation_patch
from patching.corrupt import gaussian_noise
from patching.families import decoder_layers, packed_hidden, unembed
from patching.metrics import answer_prob, evaluate
from patching.model import Model, arch, embed_noise_hook, mlp_label
from patching.packing import plan
from patching.result import PatchResult


def noise_seed(seed: int, k: int) -> int:
    """The generator seed of noise draw ``k`` under ``seed``: distinct for every (seed, draw) pair."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def window_layers(layer: int, n_layers: int, window: int) -> range:
    """ROME's window of layers restored around ``layer``: ``range(max(0, L - w//2), min(n, L - (-w//2)))``."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@contextmanager
def _block_outputs(blocks: torch.nn.ModuleList):
    """Record what each decoder block returns during the forwards run inside (the list it yields)."""
    outputs: list = [None] * len(blocks)

    def keep(i):
        return lambda mod, args, out: outputs.__setitem__(i, out)

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _replayed(blocks: torch.nn.ModuleList, outputs: list | None, upto: int):
    """Blocks below ``upto`` return their recorded ``outputs`` instead of computing: the forward resumes at
    block ``upto`` from the recorded residual stream (ROME's restored run changes nothing below its window)."""
    for i in range(upto):  # an instance attribute shadows the class's forward (bypassing wrappers' __setattr__)
        vars(blocks[i])["forward"] = lambda *args, _out=outputs[i], **kwargs: _out
    try:
        yield
    finally:
        for i in range(upto):
            vars(blocks[i]).pop("forward", None)


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
    B, W = input_ids.shape
    token = torch.as_tensor(subject_last if token is None else token).long()
    if token.shape != (B,) or int(token.min()) < 0 or int(token.max()) >= W:
        raise ValueError(f"token must hold one column in [0, {W}) per prompt")
    # packed: no compute on padding; a template's opening tokens before the subject are laid once
    lengths = attention_mask.sum(1).cpu()
    p = plan(input_ids.cpu(), attention_mask.cpu(), shareable=torch.as_tensor(subject_start).cpu() - (W - lengths))
    slot = torch.full((B * W,), -1, dtype=torch.long)
    slot[p.real] = p.read
    rows = torch.arange(B)
    token_slots, last_slots = slot[rows * W + token], slot[rows * W + W - 1]
    metric = answer_prob(answer_ids)
    names = [f"blocks.{i}.hook_mlp_out" for i in range(a.n_layers)]
    labels = [mlp_label(layer) for layer in range(a.n_layers)]
    blocks = decoder_layers(model)

    def prob(hooks, replay=None, upto=0) -> float:
        with torch.no_grad():
            with _replayed(blocks, replay, upto), model.hooks(fwd_hooks=hooks):
                hidden = packed_hidden(model, p)
            last = hidden.reshape(-1, hidden.shape[-1])[last_slots.to(hidden.device)]
            return float(evaluate(metric, unembed(model, last)))

    clean_out: dict[str, Tensor] = {}

    def keep(name):
        return lambda x, hook: clean_out.__setitem__(name, x.detach().clone())

    clean = prob([(n, keep(n)) for n in names])

    def restore(name):
        def hook(x, hook):
            x = x.clone()
            flat, src = x.reshape(-1, x.shape[-1]), clean_out[name].reshape(-1, x.shape[-1])
            flat[token_slots] = src[token_slots].to(x.dtype)
            return x

        return hook

    sums = [0.0] * a.n_layers
    corrupt_sum, scale = 0.0, None
    bar = tqdm(total=n_samples * a.n_layers, desc="causal tracing", disable=not progress, leave=False)
    for k in range(n_samples):
        noise = gaussian_noise(model, input_ids, subject_start, subject_last, scale=noise_scale,
                               multiplier=multiplier, seed=noise_seed(seed, k))
        scale = noise.scale
        noised = embed_noise_hook(p.pack(noise.sample(model.original_model.config.hidden_size)))
        with _block_outputs(blocks) as outputs:
            corrupt_sum += prob([noised])
        for layer in range(a.n_layers):
            span = window_layers(layer, a.n_layers, window)
            sums[layer] += prob([noised] + [(names[i], restore(names[i])) for i in span], outputs, span.start)
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
