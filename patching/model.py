"""Model access for patching: architecture numbers, weight slices, and forwards that resume mid-model.

Works on a TransformerLens 4.x ``TransformerBridge`` around any family in ``patching.families`` (pre-norm blocks
``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``, or NeoX's parallel ``x + attn(ln1(x)) + mlp(ln2(x))``, with
Gemma-2's post-attention/post-MLP norms; grouped-query attention where the family has it).

The speed of batched patching comes from ``run_from``: every patch of a component in layer L leaves the
residual stream before L unchanged, so patched variants restart from the cached residual at L instead of
re-running the whole model, and only the last position is unembedded. ``record`` captures, during one
ordinary forward, the keyword arguments each block receives (rotary embeddings, 4-D attention mask,
position ids) so later partial forwards replay exactly what the HF model passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from patching.families import family, family_of_config, unembed

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge as Model
else:
    # The type every ``model`` parameter takes: a TransformerLens 4.x TransformerBridge. At run time (runtime type
    # checks in the tests) it is the bridge's base class: importing the bridge would add ~5 s to every import.
    Model = torch.nn.Module

Hook = tuple[str, Callable]


@dataclass(frozen=True)
class Arch:
    """Architecture numbers read from the wrapped HF config (the bridge cfg can misreport them)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    vocab: int
    parallel: bool = False  # attention and MLP of a layer read the same residual (GPT-NeoX): no hook_resid_mid

    @property
    def group_size(self) -> int:
        """Query heads per key-value head."""
        return self.n_heads // self.n_kv_heads


def arch(model: Model) -> Arch:
    """Architecture numbers of a bridged (or plain HF) model of a supported family, from the HF config."""
    c = getattr(model, "original_model", model).config
    fam = family_of_config(c)
    n_heads = c.num_attention_heads
    d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
    return Arch(
        n_layers=c.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
        d_head=getattr(c, "head_dim", None) or c.hidden_size // n_heads, d_model=c.hidden_size,
        d_mlp=d_mlp, vocab=c.vocab_size,
        parallel=fam.parallel and bool(getattr(c, "use_parallel_residual", True)),
    )


# ---------------------------------------------------------------------------------------------- labels


def head_label(layer: int, head: int) -> str:
    """Label of a head, as mechedit writes it."""
    return f"head.{layer}.{head}"


def mlp_label(layer: int) -> str:
    """Label of an MLP."""
    return f"mlp.{layer}"


def resid_label(layer: int, pos: int) -> str:
    """Label of the residual stream entering ``layer`` at column ``pos``."""
    return f"resid.{layer}.{pos}"


@dataclass(frozen=True)
class Site:
    """A parsed component label: kind ("head", "mlp", "resid"), layer, and head index or position."""

    kind: str
    layer: int
    index: int = 0


def parse_site(label: str, a: Arch) -> Site:
    """Parse ``head.L.H``, ``mlp.L`` or ``resid.L.P``; raise ValueError naming an unknown or out-of-range label."""
    parts = label.split(".")
    try:
        if parts[0] == "mlp" and len(parts) == 2:
            site = Site("mlp", int(parts[1]))
        elif parts[0] in ("head", "resid") and len(parts) == 3:
            site = Site(parts[0], int(parts[1]), int(parts[2]))
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"cannot parse component {label!r}; expected head.L.H, mlp.L or resid.L.P") from None
    if not 0 <= site.layer < a.n_layers:
        raise ValueError(f"{label}: layer {site.layer} out of range (model has {a.n_layers} layers)")
    if site.kind == "head" and not 0 <= site.index < a.n_heads:
        raise ValueError(f"{label}: head {site.index} out of range (model has {a.n_heads} heads per layer)")
    return site


def all_labels(a: Arch, kind: str) -> list[str]:
    """Every head or every MLP label in layer order."""
    if kind == "heads":
        return [head_label(layer, h) for layer in range(a.n_layers) for h in range(a.n_heads)]
    if kind == "mlps":
        return [mlp_label(layer) for layer in range(a.n_layers)]
    raise ValueError(f"unknown component kind {kind!r}; use 'heads' or 'mlps'")


# ---------------------------------------------------------------------------------------------- weights


def _linear(bridge_component) -> torch.nn.Module:
    """The HF projection a bridge LinearBridge wraps (an ``nn.Linear``, or GPT-2's ``Conv1D``)."""
    return bridge_component.original_component


def head_out_weight(model: Model, layer: int, head: int) -> Float[Tensor, "d_model d_head"]:
    """The o_proj columns that map head ``head``'s output (hook_z) into the residual stream.

    GPT-2's output projection is a Conv1D stored ``[in, out]``: there the head's rows, transposed.
    """
    a = arch(model)
    w = _linear(model.blocks[layer].attn.o).weight
    if family(model).o_heads_dim == 0:
        return w[head * a.d_head:(head + 1) * a.d_head, :].T
    return w[:, head * a.d_head:(head + 1) * a.d_head]


def head_out(model: Model, layer: int, head: int, z: Float[Tensor, "*batch d_head"]) -> Float[Tensor, "*batch d_model"]:
    """A head's contribution to the output projection from its hook_z slice (o_proj bias excluded).

    It is the head's contribution to the residual stream unless the family normalizes the attention output
    before adding it (Gemma-2): use ``head_delta`` for residual-stream deltas.
    """
    return z @ head_out_weight(model, layer, head).to(z.dtype).T


def head_delta(
    model: Model, layer: int, head: int, z_base: Float[Tensor, "batch pos n_heads d_head"],
    z_source: Float[Tensor, "batch pos n_heads d_head"],
) -> Float[Tensor, "batch pos d_model"]:
    """What the residual stream gains when head ``head`` of ``layer`` takes ``z_source`` and the rest ``z_base``.

    Linear in the head's hook_z difference for every family except those with a post-attention norm
    (Gemma-2), where the whole layer's output is recomputed with and without the patch.
    """
    if not family(model).post_norms:
        return head_out(model, layer, head, z_source[:, :, head] - z_base[:, :, head])
    block = model.blocks[layer]
    o, post = _linear(block.attn.o), block.ln1_post.original_component
    mixed = z_base.clone()
    mixed[:, :, head] = z_source[:, :, head]
    return post(o(mixed.flatten(2))) - post(o(z_base.flatten(2)))


def project_qkv(
    model: Model, layer: int, which: str, resid: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch n d_head"]:
    """What ``blocks.L.attn.hook_{which}`` would hold if the residual entering ``layer`` were ``resid``.

    That is the q/k/v projection of ``ln1(resid)`` split into heads (n = query heads for q, key-value
    heads for k/v), before rotary embeddings; hook_q/hook_k hold pre-rotary values and the model rotates
    whatever the hook returns.
    """
    block = model.blocks[layer]
    lin = _linear(getattr(block.attn, which))
    x = torch.nn.functional.linear(block.ln1(resid), lin.weight, lin.bias)
    return x.view(*x.shape[:-1], -1, arch(model).d_head)


# ---------------------------------------------------------------------------------------------- forwards


@dataclass
class Recording:
    """One forward's cached activations, last-position logits, and the arguments every block received."""

    logits: Float[Tensor, "batch vocab"]
    cache: dict[str, Tensor]
    block_kwargs: list[dict] = field(default_factory=list)
    batch: int = 0
    block_args: list[tuple] = field(default_factory=list)  # positional arguments after hidden_states (GPT-2)


def _no_cache(value):
    """None for a KV cache object (replaying one would grow it at every call), else the value."""
    return None if hasattr(value, "get_seq_length") else value


def _block_kwargs(kwargs: dict) -> dict:
    """A block's kwargs made replayable: no KV cache, whatever the family calls it."""
    out = {k: _no_cache(v) for k, v in kwargs.items()}
    for name in ("past_key_values", "past_key_value", "layer_past", "cache"):
        if name in out:
            out[name] = None
    if "use_cache" in out:
        out["use_cache"] = False
    out.pop("hidden_states", None)
    return out


def embed_noise_hook(noise: Float[Tensor, "batch pos d_model"]) -> Hook:
    """A forward hook adding ``noise`` to the token embeddings."""
    return ("hook_embed", lambda x, hook: x + noise.to(x.dtype))


@torch.no_grad()
def record(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], names: Iterable[str],
    fwd_hooks: Sequence[Hook] = (),
) -> Recording:
    """Run one forward caching ``names`` and recording each block's kwargs; hooks are removed even on error."""
    names = set(names)
    cache: dict[str, Tensor] = {}
    kwargs: dict[int, dict] = {}
    args_after: dict[int, tuple] = {}

    def saver(name: str):
        def save(x, hook):  # keyed by the requested name: aliases (hook_z) fire under their target's name
            cache[name] = x.detach().clone()

        return save

    handles = []
    for i, block in enumerate(model.blocks):
        def pre(mod, args, kw, i=i):
            kwargs[i] = _block_kwargs(kw)
            args_after[i] = tuple(_no_cache(a) for a in args[1:])

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with model.hooks(fwd_hooks=[(n, saver(n)) for n in sorted(names)] + list(fwd_hooks)):
            logits = model(input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    missing = names - cache.keys()
    if missing:
        raise ValueError(f"hooks {sorted(missing)[:3]} did not fire; check the hook names exist in model.hook_dict")
    n = len(model.blocks)
    return Recording(logits[:, -1, :].detach(), cache, [kwargs[i] for i in range(n)], input_ids.shape[0],
                     [args_after[i] for i in range(n)])


def _repeat(value, batch: int, times: int):
    """Repeat a replayed kwarg along the batch dimension (tensors whose first dim is the batch)."""
    if times == 1:
        return value
    if isinstance(value, Tensor):
        if value.ndim and value.shape[0] == batch and batch > 1:
            return value.repeat(times, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_repeat(v, batch, times) for v in value)
    return value


@torch.no_grad()
def run_from(
    model: Model, rec: Recording, layer: int, resid: Float[Tensor, "rows pos d_model"], *, mid: bool = False,
    fwd_hooks: Sequence[Hook] = (), columns: Int[Tensor, " k"] | None = None,
) -> Float[Tensor, "rows vocab"] | Float[Tensor, "rows k"]:
    """Resume the forward at ``layer`` from ``resid`` and return last-position logits (of ``columns`` only when
    given).

    ``resid`` stacks ``rows = k * rec.batch`` prompts (variant-major); ``mid=True`` means ``resid`` is the
    residual after layer ``layer``'s attention (hook_resid_mid), so only that layer's MLP half is run
    first (not for parallel blocks, which have no such point). ``layer == n_layers`` means ``resid`` is the
    final residual stream.
    """
    rows = resid.shape[0]
    if rows % rec.batch:
        raise ValueError(f"{rows} rows are not a multiple of the recorded batch {rec.batch}")
    times = rows // rec.batch
    x = resid.to(model_dtype(model))  # a float32 delta or mask must not promote a bf16 model's residual
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        if mid:
            if arch(model).parallel:
                raise ValueError("parallel attention+MLP blocks have no mid-block residual to resume from")
            block = model.blocks[layer]
            out = block.mlp(block.ln2(x))
            if family(model).post_norms:
                out = block.ln2_post(out)
            x = x + out
            layer += 1
        for i in range(layer, len(model.blocks)):
            kw = {k: _repeat(v, rec.batch, times) for k, v in rec.block_kwargs[i].items()}
            args = _repeat(rec.block_args[i], rec.batch, times) if rec.block_args else ()
            out = model.blocks[i](x, *args, **kw)
            x = out[0] if isinstance(out, tuple) else out
        return final_logits(model, x[:, -1, :], columns)


def final_logits(
    model: Model, resid_last: Float[Tensor, "rows d_model"], columns: Int[Tensor, " k"] | None = None
) -> Float[Tensor, "rows vocab"] | Float[Tensor, "rows k"]:
    """Logits from final-layer residuals at the prediction position (ln_final, unembed, Gemma-2's soft-cap);
    ``columns``: only those vocabulary entries (``patching.metrics.narrowed``)."""
    return unembed(model, model.ln_final(resid_last[:, None, :].to(model_dtype(model)))[:, 0, :], columns)


def model_dtype(model: Model) -> torch.dtype:
    """The dtype the model computes in (its first floating-point parameter's)."""
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


def chunks(n: int, size: int) -> list[range]:
    """Split ``range(n)`` into consecutive ranges of at most ``size``."""
    size = max(1, size)
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def variants_per_chunk(batch: int, pos: int, a: Arch, max_rows: int | None) -> int:
    """How many patched variants of a ``batch``-prompt batch to stack in one forward."""
    if max_rows is None:
        # keep each stacked forward's MLP activations (rows * pos * 4 d_model floats) near 64 MiB
        max_rows = max(batch, int(64 * 2**20 / (4 * 4 * max(1, pos) * a.d_model)))
    return max(1, max_rows // batch)


def position_mask(
    positions: Bool[Tensor, "batch pos"] | None, batch: int, pos: int
) -> Float[Tensor, "batch pos 1"] | None:
    """A float mask selecting the patched positions (None: every position)."""
    if positions is None:
        return None
    if positions.shape != (batch, pos):
        raise ValueError(f"positions mask has shape {tuple(positions.shape)}, expected {(batch, pos)}")
    return positions.to(torch.float32)[..., None]
