"""Collect activations at chosen positions for many hooks in one forward pass per batch.

Positions are gathered inside the hooks, so no full ``[batch, pos, d]`` activation outlives its hook; the
forward pass stops as soon as every requested hook has fired (the unembedding is skipped when only
residual-stream hooks are asked for). Works with any TransformerLens model exposing ``hook_dict`` and a
``hooks(fwd_hooks=...)`` context (``TransformerBridge``, ``HookedTransformer``) and with left or right padding.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes.lbfgs import threads_for


class _AllCollected(Exception):
    """Raised inside the last needed hook to end the forward pass early."""


def n_layers_of(model: torch.nn.Module) -> int:
    """Number of transformer blocks of a TransformerLens model."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        return len(blocks)
    return int(model.cfg.n_layers)


def layer_hooks(model: torch.nn.Module, suffix: str = "hook_resid_post",
                layers: Sequence[int] | None = None) -> list[str]:
    """Hook names ``blocks.{L}.{suffix}`` for every layer (or the given ones), checked against the model."""
    n = n_layers_of(model)
    layers = range(n) if layers is None else layers
    names = [f"blocks.{layer}.{suffix}" for layer in layers]
    check_hook_names(model, names)
    return names


def _name_patterns(valid: Sequence[str]) -> list[str]:
    """Valid hook names with block indices collapsed to ``{L}`` (a readable summary of ~1000 names)."""
    return sorted({re.sub(r"^blocks\.\d+\.", "blocks.{L}.", n) for n in valid})


def check_hook_names(model: torch.nn.Module, hook_names: Sequence[str]) -> None:
    """Raise ValueError naming unknown or duplicated hook names and listing the valid ones."""
    if isinstance(hook_names, str):
        raise TypeError(f"hook_names must be a list of names, got the string {hook_names!r}")
    if len(hook_names) == 0:
        raise ValueError("no hook names given")
    dupes = sorted({n for n in hook_names if list(hook_names).count(n) > 1})
    if dupes:
        raise ValueError(f"duplicated hook name(s): {dupes}")
    valid = list(model.hook_dict)
    unknown = [n for n in hook_names if n not in model.hook_dict]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"unknown hook name(s) {unknown}.{hint} Valid names ({{L}} = 0..{n_layers_of(model) - 1}): "
            + ", ".join(_name_patterns(valid))
        )


def _check_inputs(input_ids, attention_mask, positions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes and positions; return (ids, mask, positions as [n, k])."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
    n, width = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
    positions = torch.as_tensor(positions)
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"positions must be integer indices, got dtype {positions.dtype}")
    if positions.ndim not in (1, 2) or positions.shape[0] != n or positions.numel() == 0:
        raise ValueError(f"positions must be [batch] or [batch, k] with batch={n}, got shape {tuple(positions.shape)}")
    pos2 = positions.long().reshape(n, -1)
    bad = ((pos2 < 0) | (pos2 >= width)).any(1).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"position(s) {pos2[i].tolist()} of example {i} out of range [0, {width}) "
                         f"({len(bad)} example(s) affected; -1 usually means a subject was not located)")
    on_pad = (attention_mask.gather(1, pos2) == 0).any(1).nonzero().flatten()
    if len(on_pad):
        i = int(on_pad[0])
        raise ValueError(f"position(s) {pos2[i].tolist()} of example {i} point at padding "
                         f"({len(on_pad)} example(s) affected)")
    return input_ids, attention_mask, pos2


@torch.no_grad()
def collect_activations(
    model: torch.nn.Module,
    input_ids: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"] | None,
    positions: Int[torch.Tensor, " batch"] | Int[torch.Tensor, "batch k"],
    hook_names: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = True,
    stop_early: bool = True,
    truncate: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Float[torch.Tensor, "hook batch d"] | Float[torch.Tensor, "hook batch k d"]:
    """Activations of ``hook_names`` at ``positions`` (one index per example, or k per example).

    One forward pass per batch. With ``truncate`` (causal models: later tokens cannot change earlier
    positions) each example is cut after its last requested position; examples are sorted by that length
    and re-left-padded per batch, so no batch runs columns nobody needs. Trailing dimensions beyond
    position are flattened (``attn.hook_z`` gives heads*d_head). Raises ValueError for unknown hooks,
    out-of-range or padding positions, and NaN/inf activations.
    """
    check_hook_names(model, hook_names)
    input_ids, attention_mask, pos2 = _check_inputs(input_ids, attention_mask, positions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, k = pos2.shape
    device = getattr(model.cfg, "device", None) or input_ids.device
    valid = attention_mask.bool()
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.zeros(n, dtype=torch.long))
    last = input_ids.shape[1] - 1 - valid.flip(1).float().argmax(1)
    end = (pos2.amax(1) if truncate else last) + 1  # each example runs columns [first, end)
    lengths = end - first
    order = torch.argsort(lengths, descending=True, stable=True)
    pad_id = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
    outs: list[torch.Tensor | None] = [None] * len(hook_names)
    fired = [False] * len(hook_names)
    state: dict = {}

    def make_hook(i: int):
        def hook(act, hook=None):
            if not isinstance(act, torch.Tensor):
                raise TypeError(f"hook {hook_names[i]!r} produced {type(act).__name__}, not a tensor")
            rows = torch.arange(act.shape[0], device=act.device)[:, None]
            got = act[rows, state["pos"]].detach().reshape(act.shape[0], k, -1).to(dtype=dtype, device="cpu")
            if outs[i] is None:
                outs[i] = torch.empty(n, k, got.shape[-1], dtype=dtype)
            outs[i][state["rows"]] = got
            fired[i] = True
            if stop_early and all(fired):
                raise _AllCollected
            return None

        return hook

    chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    work = sum(p.numel() for p in model.parameters()) * min(batch_size, n) * int(lengths.max())
    fwd_hooks = [(name, make_hook(i)) for i, name in enumerate(hook_names)]
    with threads_for(work, small=3e8), model.hooks(fwd_hooks=fwd_hooks):
        for rows in tqdm(chunks, desc="collecting activations", disable=not progress or len(chunks) < 2,
                         leave=False):
            width = int(lengths[rows].max())
            ids = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
            mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
            for j, r in enumerate(rows.tolist()):  # re-left-pad the kept span of every example
                a, b = int(first[r]), int(end[r])
                ids[j, width - (b - a):] = input_ids[r, a:b]
                mask[j, width - (b - a):] = attention_mask[r, a:b]
            state["rows"] = rows
            state["pos"] = (pos2[rows] - first[rows, None] + width - lengths[rows, None]).to(device)
            fired[:] = [False] * len(hook_names)
            try:
                model(ids.to(device), attention_mask=mask.to(device))
            except _AllCollected:
                pass
            if not all(fired):
                missing = [h for h, f in zip(hook_names, fired, strict=True) if not f]
                raise RuntimeError(f"hook(s) {missing} never fired during the forward pass")
    widths = {name: o.shape[-1] for name, o in zip(hook_names, outs, strict=True)}
    if len(set(widths.values())) > 1:
        raise ValueError(f"hooks have different activation widths {widths}; collect them in separate calls")
    out = torch.stack(outs)  # [hook, n, k, d]
    finite = torch.isfinite(out).all(-1)
    if not finite.all():
        h, i = (int(v) for v in (~finite).nonzero()[0][:2])
        n_bad = int((~finite.all(0).all(1)).sum())
        raise ValueError(f"NaN/inf activations at hook {hook_names[h]!r}, example {i} "
                         f"({n_bad} example(s) affected)")
    return out[:, :, 0] if positions.ndim == 1 else out
