"""Activation patching of heads, MLPs and residual positions, batched.

A patch of a component in layer L changes nothing upstream of it, and its output enters the residual
stream additively: patching head h (hook_z) adds ``W_O[h] (z_source − z_base)`` to the residual after
layer L's attention (Gemma-2: the change of the post-normed attention output, ``head_delta``), patching MLP L
adds ``mlp_source − mlp_base`` after layer L, and patching the residual entering L at column p adds
``resid_source − resid_base`` there. In parallel blocks (GPT-NeoX) MLP L does not read attention L, so a
head's delta is added after the whole layer. So each variant restarts from the base
run's cached residual at that point plus its delta, variants sharing a start point are stacked along the
batch dimension (chunked), and only the final position is unembedded. Results equal one full forward
per component with a hook (see ``patching.reference``) to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from patching.corrupt import Corruption
from patching.metrics import Metric, evaluate_variants, narrowed
from patching.model import (
    Arch,
    Model,
    Site,
    all_labels,
    arch,
    chunks,
    final_logits,
    head_delta,
    parse_site,
    position_mask,
    resid_label,
    run_from,
    variants_per_chunk,
)
from patching.result import Direction, PatchResult
from patching.runs import Runs, make_runs

Components = str | Sequence[str]


def expand_components(model: Model, components: Components, pos: int) -> list[str]:
    """Labels for ``"heads"``, ``"mlps"``, ``"all"`` (heads and MLPs), ``"resid"`` (every layer × column), or a list."""
    a = arch(model)
    if isinstance(components, str):
        if components == "all":
            return all_labels(a, "heads") + all_labels(a, "mlps")
        if components == "resid":
            return [resid_label(layer, p) for layer in range(a.n_layers) for p in range(pos)]
        return all_labels(a, components)
    labels = list(components)
    if not labels:
        raise ValueError("no components to patch")
    for label in labels:
        site = parse_site(label, a)
        if site.kind == "resid" and not 0 <= site.index < pos:
            raise ValueError(f"{label}: position {site.index} out of range (prompts have {pos} columns)")
    return labels


def hook_names(site: Site, parallel: bool = False) -> list[str]:
    """Hooks whose values a site's delta and start point need."""
    L = site.layer
    if site.kind == "head":
        return [f"blocks.{L}.attn.hook_z", start_point(site, parallel)[2]]
    if site.kind == "mlp":
        return [f"blocks.{L}.hook_mlp_out", f"blocks.{L}.hook_resid_post"]
    return [f"blocks.{L}.hook_resid_pre"]


def start_point(site: Site, parallel: bool = False) -> tuple[int, bool, str]:
    """(layer to resume at, whether it is the mid-block point, hook holding the base residual there)."""
    L = site.layer
    if site.kind == "head" and not parallel:
        return L, True, f"blocks.{L}.hook_resid_mid"
    if site.kind in ("mlp", "head"):
        return L + 1, False, f"blocks.{L}.hook_resid_post"
    return L, False, f"blocks.{L}.hook_resid_pre"


def site_delta(
    model: Model, runs: Runs, site: Site, mask: Float[Tensor, "batch pos 1"] | None
) -> Float[Tensor, "batch pos d_model"]:
    """What patching ``site`` (source value into the base run) adds to the residual stream."""
    b, s = runs.base.cache, runs.source.cache
    L = site.layer
    if site.kind == "head":
        name = f"blocks.{L}.attn.hook_z"
        d = head_delta(model, L, site.index, b[name], s[name])
    elif site.kind == "mlp":
        name = f"blocks.{L}.hook_mlp_out"
        d = s[name] - b[name]
    else:
        name = f"blocks.{L}.hook_resid_pre"
        d = torch.zeros_like(b[name])
        d[:, site.index] = s[name][:, site.index] - b[name][:, site.index]
        return d
    return d if mask is None else d * mask


def patch_deltas(
    model: Model, runs: Runs, metric: Metric, labels: list[str], delta: Callable[[Site], Tensor], *,
    max_rows: int | None, progress: bool, desc: str,
) -> list[float]:
    """Metric after adding each label's residual delta at its start point; variants stacked per start point."""
    a: Arch = runs.arch
    sites = [parse_site(label, a) for label in labels]
    groups: dict[tuple[int, bool, str], list[int]] = {}
    for i, site in enumerate(sites):
        groups.setdefault(start_point(site, a.parallel), []).append(i)
    B, pos = runs.base.cache[next(iter(runs.base.cache))].shape[:2]
    per = variants_per_chunk(B, pos, a, max_rows)
    work = [(key, [idx[i] for i in c]) for key, idx in groups.items() for c in chunks(len(idx), per)]
    values: list[float] = [0.0] * len(labels)
    columns, metric = narrowed(metric)  # a metric reading a few vocabulary columns: unembed only those
    for (layer, mid, start_name), idx in tqdm(work, desc=desc, disable=not progress, leave=False):
        start = runs.base.cache[start_name]
        with torch.no_grad():
            x = torch.cat([start + delta(sites[i]) for i in idx])
            if layer == a.n_layers:  # the last MLP: its output is the final residual
                logits = final_logits(model, x[:, -1, :], columns)
            else:
                logits = run_from(model, runs.base, layer, x, mid=mid, columns=columns)
        for i, v in zip(idx, evaluate_variants(metric, logits, B), strict=True):
            values[i] = v
    return values


def activation_patch(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, components: Components = "all", direction: Direction = "denoising",
    positions: Bool[Tensor, "batch pos"] | None = None, max_rows: int | None = None, progress: bool = False,
) -> PatchResult:
    """Patch each component (head hook_z, MLP hook_mlp_out, or residual column) alone; metric per patch.

    ``positions`` restricts head/MLP patches to those (batch, column) entries (default: every column);
    residual patches are per column by definition. ``max_rows`` caps the rows of one stacked forward.
    Prompts must be left-padded: the metric sees the logits of the last column.
    """
    labels = expand_components(model, components, input_ids.shape[1])
    a = arch(model)
    sites = [parse_site(label, a) for label in labels]
    names = sorted({n for s in sites for n in hook_names(s, a.parallel)})
    runs = make_runs(model, input_ids, attention_mask, corruption, metric, direction, names)
    mask = position_mask(positions, *input_ids.shape)
    values = patch_deltas(model, runs, metric, labels, lambda s: site_delta(model, runs, s, mask), max_rows=max_rows,
                          progress=progress, desc="activation patching")
    return PatchResult("activation", labels, values, runs.clean, runs.corrupt, direction)
