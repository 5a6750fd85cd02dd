"""Model components (MLP layers, attention heads, whole attention layers) and the parameters they own.

Parameters are named as in a plain HF checkpoint (``mechedit.models.hf_parameters``: the bridge's names without
its ``._original_component`` infixes); the bridge shares their storage, so editing them edits the bridge.
Where each family keeps them is ``patching.families`` (Llama/Mistral, Qwen2, Gemma, Gemma-2, GPT-2, GPT-NeoX): an
MLP owns every weight and bias of its projections; a head owns its q rows (and q bias entries) and its slice of
the output projection (o_proj columns, or the rows of GPT-2's ``[in, out]`` Conv1D); fused q/k/v (GPT-2,
NeoX) are owned through the bridge's per-projection views.

Grouped-query attention: k_proj/v_proj rows of one key-value group are shared by ``n_heads / n_kv_heads``
query heads. A ``Head`` always owns its q_proj rows and its o_proj columns. It owns its group's k/v rows
only when every head of that group is in the selected set (``kv="group"``, the default), because training
a shared k/v slice changes the sibling heads too. ``kv="always"`` includes the shared slice anyway (the
siblings change as well), ``kv="never"`` leaves k/v frozen. ``Attn(layer)`` owns all of q/k/v/o.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch

from mechedit.models import hf_parameters
from patching.families import Family, family
from patching.model import Model, arch

KVPolicy = Literal["group", "always", "never"]


class _Named:
    """What every component shares: its ``kind``, its label (``mlp.3``, ``head.3.1``) and its hook."""

    kind: ClassVar[str]
    HOOK: ClassVar[str]  # hook name template, formatted with the component's fields

    @property
    def hook_name(self) -> str:
        """Hook whose output is this component's contribution (for heads: ``hook_z``, index it with ``head``)."""
        return self.HOOK.format(**asdict(self))

    def __str__(self) -> str:
        return ".".join([self.kind, *(str(v) for v in asdict(self).values())])


@dataclass(frozen=True, order=True)
class MLP(_Named):
    """The MLP (gate/up/down) of one layer."""

    layer: int
    kind: ClassVar[str] = "mlp"
    HOOK: ClassVar[str] = "blocks.{layer}.hook_mlp_out"


@dataclass(frozen=True, order=True)
class Head(_Named):
    """One attention (query) head of one layer (its hook holds per-head outputs before o_proj)."""

    layer: int
    head: int
    kind: ClassVar[str] = "head"
    HOOK: ClassVar[str] = "blocks.{layer}.attn.hook_z"


@dataclass(frozen=True, order=True)
class Attn(_Named):
    """A whole attention layer (all heads, q/k/v/o)."""

    layer: int
    kind: ClassVar[str] = "attn"
    HOOK: ClassVar[str] = "blocks.{layer}.hook_attn_out"


Component = MLP | Head | Attn


def parse_component(label: str | dict) -> Component:
    """Parse ``"mlp.3"``, ``"head.3.1"``, ``"attn.3"`` or the loc.json dict form."""
    if isinstance(label, dict):
        kind = label.get("kind")
        if kind == "mlp":
            return MLP(int(label["layer"]))
        if kind == "head":
            return Head(int(label["layer"]), int(label["head"]))
        if kind == "attn":
            return Attn(int(label["layer"]))
        raise ValueError(f"unknown component {label!r}")
    parts = label.split(".")
    try:
        if parts[0] == "mlp" and len(parts) == 2:
            return MLP(int(parts[1]))
        if parts[0] == "head" and len(parts) == 3:
            return Head(int(parts[1]), int(parts[2]))
        if parts[0] == "attn" and len(parts) == 2:
            return Attn(int(parts[1]))
    except ValueError:
        pass
    raise ValueError(f"cannot parse component {label!r}; expected mlp.L, head.L.H or attn.L")


def component_to_dict(c: Component) -> dict:
    """The loc.json form of a component."""
    if isinstance(c, Head):
        return {"kind": "head", "layer": c.layer, "head": c.head}
    return {"kind": c.kind, "layer": c.layer}


def all_components(model: Model, kinds: Sequence[str] = ("mlp", "head")) -> list[Component]:
    """Every MLP and/or head of the model, in layer order."""
    s = arch(model)
    out: list[Component] = []
    for layer in range(s.n_layers):
        if "head" in kinds:
            out += [Head(layer, h) for h in range(s.n_heads)]
        if "attn" in kinds:
            out.append(Attn(layer))
        if "mlp" in kinds:
            out.append(MLP(layer))
    return out


def check_in_range(model: Model, components: Iterable[Component]) -> None:
    """Raise ValueError naming any component whose layer or head does not exist in ``model``."""
    s = arch(model)
    for c in components:
        if not 0 <= c.layer < s.n_layers:
            raise ValueError(f"{c}: layer {c.layer} out of range (model has {s.n_layers} layers)")
        if isinstance(c, Head) and not 0 <= c.head < s.n_heads:
            raise ValueError(f"{c}: head {c.head} out of range (model has {s.n_heads} heads per layer)")


# ------------------------------------------------------------------ parameter ownership


@dataclass(frozen=True)
class ParamSlice:
    """A parameter (HF name) or a contiguous slice of it along ``dim`` (``dim=None``: whole tensor)."""

    name: str
    dim: int | None = None
    start: int = 0
    stop: int = 0


def _attn_slices(fam: Family, layer: int, which: str, dim: int, start: int, stop: int,
                 names: dict) -> list[ParamSlice]:
    """A head's (or k/v group's) slice of projection ``which``: its weight along ``dim`` and its bias entries."""
    out = [ParamSlice(fam.attn_param(layer, which), dim, start, stop)]
    bias = fam.attn_param(layer, which, "bias")
    if which != "o" and bias in names:  # the o bias is shared by all heads: owned by Attn only
        out.append(ParamSlice(bias, 0, start, stop))
    return out


def component_slices(model: Model, components: Iterable[Component], kv: KVPolicy = "group") -> list[ParamSlice]:
    """The parameter slices a set of components owns (see the module docstring for the k/v rule)."""
    components = list(dict.fromkeys(components))
    check_in_range(model, components)
    s = arch(model)
    fam = family(model)
    names = hf_parameters(model)
    out: list[ParamSlice] = []
    heads_by_layer: dict[int, set[int]] = {}
    for c in components:
        if isinstance(c, MLP):
            out += [ParamSlice(n) for n in fam.mlp_params(c.layer) if n.endswith(".weight") or n in names]
        elif isinstance(c, Attn):
            out += [ParamSlice(fam.attn_param(c.layer, w, kind)) for w in "qkvo" for kind in ("weight", "bias")
                    if kind == "weight" or fam.attn_param(c.layer, w, kind) in names]
        else:
            heads_by_layer.setdefault(c.layer, set()).add(c.head)
    for layer, heads in sorted(heads_by_layer.items()):
        if Attn(layer) in components:
            continue
        for h in sorted(heads):
            span = (h * s.d_head, (h + 1) * s.d_head)
            out += _attn_slices(fam, layer, "q", 0, *span, names)
            out += _attn_slices(fam, layer, "o", fam.o_heads_dim, *span, names)
        groups = sorted({h // s.group_size for h in heads})
        for g in groups:
            members = set(range(g * s.group_size, (g + 1) * s.group_size))
            if kv == "always" or (kv == "group" and members <= heads):
                for which in "kv":
                    out += _attn_slices(fam, layer, which, 0, g * s.d_head, (g + 1) * s.d_head, names)
    missing = [sl.name for sl in out if sl.name not in names]
    if missing:
        raise ValueError(f"model has no parameter {missing[0]!r} where the {fam.name} adapter expects it")
    return out


def trainable_masks(
    model: Model, components: Iterable[Component], kv: KVPolicy = "group"
) -> dict[str, torch.Tensor | None]:
    """For each owned parameter: None if owned whole, else a boolean mask of the owned entries."""
    params = hf_parameters(model)
    masks: dict[str, torch.Tensor | None] = {}
    for sl in component_slices(model, components, kv):
        if sl.dim is None:
            masks[sl.name] = None
            continue
        if sl.name in masks and masks[sl.name] is None:
            continue
        m = masks.get(sl.name)
        if m is None:
            m = torch.zeros_like(params[sl.name], dtype=torch.bool)
        idx = [slice(None)] * m.ndim
        idx[sl.dim] = slice(sl.start, sl.stop)
        m[tuple(idx)] = True
        masks[sl.name] = m
    # a mask that covers everything is the same as owning the whole tensor
    return {k: (None if m is not None and bool(m.all()) else m) for k, m in masks.items()}


def n_params(model: Model, components: Iterable[Component], kv: KVPolicy = "group") -> int:
    """Exact number of parameters a set of components owns (shared slices counted once)."""
    params = hf_parameters(model)
    total = 0
    for name, m in trainable_masks(model, components, kv).items():
        total += params[name].numel() if m is None else int(m.sum())
    return total


def component_n_params(model: Model, c: Component, kv: KVPolicy = "group") -> int:
    """Parameters one component owns on its own (a lone head: its q rows and o columns)."""
    return n_params(model, [c], kv)
