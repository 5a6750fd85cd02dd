"""Slow reference implementations: one full forward (or two) per component, with hooks, as TransformerLens'
generic patching does. They validate the batched functions in tests and are the benchmark baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from patching.activation import Components, expand_components
from patching.corrupt import Corruption, corrupt_inputs
from patching.metrics import Metric, answer_prob, evaluate
from patching.model import Model, arch, parse_site
from patching.path import QKV, check_receivers
from patching.result import PatchResult, check_direction
from patching.tracing import window_layers


def _cache(model, ids, mask, hooks, names):
    """Full-model forward with ``hooks`` caching ``names``; returns (last-position logits, cache)."""
    cache: dict[str, Tensor] = {}

    def saver(name):
        def save(x, hook):
            cache[name] = x.detach().clone()

        return save

    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks) + [(n, saver(n)) for n in names]):
        logits = model(ids, attention_mask=mask)
    return logits[:, -1, :], cache


def _runs(model, input_ids, attention_mask, corruption, direction, names):
    check_direction(direction)
    corrupt_ids, corrupt_hooks = corrupt_inputs(model, input_ids, corruption)
    clean = (input_ids, [], *_cache(model, input_ids, attention_mask, [], names))
    corrupt = (corrupt_ids, corrupt_hooks, *_cache(model, corrupt_ids, attention_mask, corrupt_hooks, names))
    return (corrupt, clean) if direction == "denoising" else (clean, corrupt)


def _all_hooks(a) -> list[str]:
    return [f"blocks.{L}.{n}" for L in range(a.n_layers) for n in ("attn.hook_z", "hook_mlp_out")]


def activation_patch_reference(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, components: Components = "all", direction: str = "denoising",
    positions: Bool[Tensor, "batch pos"] | None = None, progress: bool = False,
) -> PatchResult:
    """Activation patching with one full forward per component."""
    a = arch(model)
    labels = expand_components(model, components, input_ids.shape[1])
    names = [f"blocks.{L}.{n}" for L in range(a.n_layers) for n in ("attn.hook_z", "hook_mlp_out", "hook_resid_pre")]
    (b_ids, b_hooks, b_logits, _), (_, _, s_logits, src) = _runs(model, input_ids, attention_mask, corruption,
                                                                  direction, names)
    pmask = None if positions is None else positions.bool()
    values = []
    for label in tqdm(labels, desc="activation patching (reference)", disable=not progress, leave=False):
        s = parse_site(label, a)
        if s.kind == "head":
            name = f"blocks.{s.layer}.attn.hook_z"

            def fn(x, hook, s=s, name=name):
                x = x.clone()
                new = src[name][:, :, s.index]
                x[:, :, s.index] = new if pmask is None else torch.where(pmask[..., None], new, x[:, :, s.index])
                return x
        elif s.kind == "mlp":
            name = f"blocks.{s.layer}.hook_mlp_out"

            def fn(x, hook, name=name):
                return src[name].clone() if pmask is None else torch.where(pmask[..., None], src[name], x)
        else:
            name = f"blocks.{s.layer}.hook_resid_pre"

            def fn(x, hook, s=s, name=name):
                x = x.clone()
                x[:, s.index] = src[name][:, s.index]
                return x
        with torch.no_grad():
            logits = model.run_with_hooks(b_ids, attention_mask=attention_mask, fwd_hooks=b_hooks + [(name, fn)])
            values.append(float(evaluate(metric, logits[:, -1, :])))
    clean, corrupt = (s_logits, b_logits) if direction == "denoising" else (b_logits, s_logits)
    return PatchResult("activation", labels, values, float(evaluate(metric, clean)), float(evaluate(metric, corrupt)),
                       direction)


def _freeze_hooks(a, base, src, sender):
    """Hooks freezing every head and MLP to ``base`` except ``sender``, which takes its ``src`` value."""
    hooks = []
    for name in _all_hooks(a):
        layer = int(name.split(".")[1])
        if sender.kind == "head" and name.endswith("hook_z") and layer == sender.layer:
            def fn(x, hook, name=name):
                out = base[name].clone()
                out[:, :, sender.index] = src[name][:, :, sender.index]
                return out
        elif sender.kind == "mlp" and name.endswith("hook_mlp_out") and layer == sender.layer:
            def fn(x, hook, name=name):
                return src[name].clone()
        else:
            def fn(x, hook, name=name):
                return base[name].clone()
        hooks.append((name, fn))
    return hooks


def path_patch_reference(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, senders: Components = "all", receivers: str | Sequence[str] = "logits",
    receiver_inputs: Sequence[str] = QKV, direction: str = "noising", progress: bool = False,
) -> PatchResult:
    """Path patching with explicit freezing: one forward per sender (direct) or two (into heads' q/k/v)."""
    a = arch(model)
    labels = expand_components(model, senders, input_ids.shape[1])
    (b_ids, b_hooks, b_logits, base), (_, _, s_logits, src) = _runs(model, input_ids, attention_mask, corruption,
                                                                      direction, _all_hooks(a))
    rsites = None if isinstance(receivers, str) else check_receivers(model, receivers, receiver_inputs)
    values = []
    for label in tqdm(labels, desc="path patching (reference)", disable=not progress, leave=False):
        sender = parse_site(label, a)
        frozen = _freeze_hooks(a, base, src, sender)
        with torch.no_grad():
            if rsites is None:
                logits = model.run_with_hooks(b_ids, attention_mask=attention_mask, fwd_hooks=b_hooks + frozen)
            else:
                qkv_names = sorted({f"blocks.{r.layer}.attn.hook_{w}" for r in rsites for w in receiver_inputs})
                _, got = _cache(model, b_ids, attention_mask, b_hooks + frozen, qkv_names)
                patch = []
                for r in rsites:
                    for w in receiver_inputs:
                        name = f"blocks.{r.layer}.attn.hook_{w}"
                        idx = r.index if w == "q" else r.index // a.group_size

                        def fn(x, hook, name=name, idx=idx, got=got):
                            x = x.clone()
                            x[:, :, idx] = got[name][:, :, idx]
                            return x
                        patch.append((name, fn))
                logits = model.run_with_hooks(b_ids, attention_mask=attention_mask, fwd_hooks=b_hooks + patch)
            values.append(float(evaluate(metric, logits[:, -1, :])))
    clean, corrupt = (s_logits, b_logits) if direction == "denoising" else (b_logits, s_logits)
    return PatchResult("path", labels, values, float(evaluate(metric, clean)), float(evaluate(metric, corrupt)),
                       direction)


def attribution_reference(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, components: Components = "all", direction: str = "denoising", eps: float = 1e-2,
) -> list[float]:
    """Directional derivatives d metric / d alpha at alpha=0 of ``base + alpha (source − base)`` per component,
    by Richardson-extrapolated central differences (what attribution patching estimates); four forwards each."""
    a = arch(model)
    labels = expand_components(model, components, input_ids.shape[1])
    (b_ids, b_hooks, _, base), (_, _, _, src) = _runs(model, input_ids, attention_mask, corruption, direction,
                                                      _all_hooks(a))
    out = []
    for label in labels:
        s = parse_site(label, a)
        name = f"blocks.{s.layer}.attn.hook_z" if s.kind == "head" else f"blocks.{s.layer}.hook_mlp_out"
        vals = []
        for alpha in (eps, -eps, eps / 2, -eps / 2):
            def fn(x, hook, alpha=alpha, s=s, name=name):
                x = x.clone()
                if s.kind == "head":
                    x[:, :, s.index] = x[:, :, s.index] + alpha * (src[name][:, :, s.index] - base[name][:, :, s.index])
                    return x
                return x + alpha * (src[name] - base[name])
            with torch.no_grad():
                logits = model.run_with_hooks(b_ids, attention_mask=attention_mask, fwd_hooks=b_hooks + [(name, fn)])
            vals.append(float(evaluate(metric, logits[:, -1, :])))
        wide, narrow = (vals[0] - vals[1]) / (2 * eps), (vals[2] - vals[3]) / eps
        out.append((4 * narrow - wide) / 3)  # Richardson: cancels the O(eps^2) curvature error
    return out


def rome_trace_reference(
    model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], noise_ids: Sequence[int],
    noise, answer_ids: Int[Tensor, " batch"], token: Int[Tensor, " batch"], *, window: int = 10,
) -> list[float]:
    """ROME's window trace with full forwards: per layer and noise draw, one noised forward from the embeddings with
    the clean MLP outputs of the window written back at ``token``; returns mean p(answer) per layer.

    ``noise`` is a ``Noise`` spec whose seed is replaced by each of ``noise_ids`` in turn.
    """
    a = arch(model)
    rows = torch.arange(input_ids.shape[0])
    metric = answer_prob(answer_ids)
    mlp = [f"blocks.{L}.hook_mlp_out" for L in range(a.n_layers)]
    _, clean = _cache(model, input_ids, attention_mask, [], mlp)
    sums = [0.0] * a.n_layers
    for s in noise_ids:
        _, noise_hooks = corrupt_inputs(model, input_ids, replace(noise, seed=s))
        for layer in range(a.n_layers):
            def put(x, hook, c=None):
                x = x.clone()
                x[rows, token] = c[rows, token]
                return x

            hooks = [(mlp[i], lambda x, hook, c=clean[mlp[i]]: put(x, hook, c))
                     for i in window_layers(layer, a.n_layers, window)]
            logits, _ = _cache(model, input_ids, attention_mask, list(noise_hooks) + hooks, [])
            sums[layer] += float(evaluate(metric, logits))
    return [v / len(noise_ids) for v in sums]
