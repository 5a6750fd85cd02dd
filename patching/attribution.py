"""Attribution patching: the first-order estimate of activation patching, 2 forwards + 1 backward.

For a component with base activation ``a`` and source activation ``a'``, patching changes the metric by
about ``(a' − a) · ∂metric/∂a`` (gradient at the base run), summed over batch, positions and the
component's dimensions. Heads use their hook_z slice, MLPs hook_mlp_out. Gradients are taken with
``torch.autograd.grad`` on the activations only: parameters' ``.grad`` are never touched.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from patching.activation import Components, expand_components
from patching.corrupt import Corruption, corrupt_inputs
from patching.metrics import Metric, evaluate
from patching.model import Model, arch, parse_site, position_mask, record
from patching.result import Direction, PatchResult, check_direction
from patching.runs import check_inputs


def _site_hook(site) -> str:
    return f"blocks.{site.layer}.attn.hook_z" if site.kind == "head" else f"blocks.{site.layer}.hook_mlp_out"


def attribution_patch(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, components: Components = "all", direction: Direction = "denoising",
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> PatchResult:
    """Estimate the metric with each head/MLP patched, from one gradient at the base run.

    ``values`` are ``metric(base) + attribution`` so that ``effects`` normalize like activation patching.
    """
    check_direction(direction)
    check_inputs(model, input_ids, attention_mask)
    a = arch(model)
    labels = expand_components(model, components, input_ids.shape[1])
    sites = [parse_site(label, a) for label in labels]
    if any(s.kind == "resid" for s in sites):
        raise ValueError("attribution patching covers heads and MLPs, not residual positions")
    names = sorted({_site_hook(s) for s in sites})
    corrupt_ids, corrupt_hooks = corrupt_inputs(model, input_ids, corruption)
    if direction == "denoising":
        base_ids, base_hooks, src_ids, src_hooks = corrupt_ids, corrupt_hooks, input_ids, []
    else:
        base_ids, base_hooks, src_ids, src_hooks = input_ids, [], corrupt_ids, corrupt_hooks
    source = record(model, src_ids, attention_mask, names, fwd_hooks=src_hooks)

    acts: dict[str, Tensor] = {}

    def keeper(name):
        def keep(x, hook):
            acts[name] = x
            return x

        return keep

    def leaf(x, hook):  # gradients flow from the embeddings on, whatever the parameters' requires_grad
        return x.detach().requires_grad_(True)

    hooks = base_hooks + [("hook_embed", leaf)] + [(n, keeper(n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(base_ids, attention_mask=attention_mask)
        value = evaluate(metric, logits[:, -1, :])
        grads = dict(zip(names, torch.autograd.grad(value, [acts[n] for n in names]), strict=True))
    base_value = float(value.detach())
    mask = position_mask(positions, *input_ids.shape)
    values = []
    with torch.no_grad():
        for s in sites:
            n = _site_hook(s)
            diff, g = source.cache[n] - acts[n].detach(), grads[n]
            if s.kind == "head":
                diff, g = diff[:, :, s.index], g[:, :, s.index]
            prod = diff * g
            if mask is not None:
                prod = prod * mask
            values.append(base_value + float(prod.sum()))
        src_value = float(evaluate(metric, source.logits))
    clean, corrupt = (src_value, base_value) if direction == "denoising" else (base_value, src_value)
    return PatchResult("attribution", labels, values, clean, corrupt, direction)
