"""Which entries of which parameters an edit trains, and how the optimizer sees only those entries.

A parameter owned whole (an MLP projection, a whole attention layer) is trained in place. A parameter owned
in part (a head's q rows / o columns, a k/v group slice) is never trained as a tensor: its owned entries are
copied into a separate 1-D leaf, and a forward hook on the ``nn.Linear`` holding ``W`` replaces its output by
``F.linear(x, W.index_put(owned, leaf))``. So gradients, AdamW moments and weight decay exist only for owned
entries, and the unowned entries of that tensor are never written. (``torch.func.functional_call`` is not used:
under the TransformerLens bridge it leaves the override tensor in the module instead of restoring the
Parameter.) The cost is one extra frozen matmul per partly owned projection. Every other parameter gets
``requires_grad=False``, so autograd computes no weight gradient for it, and the backward pass ends at the
earliest trained layer (nothing below it requires grad). ``begin`` / ``end`` set and restore the flags and hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int

from mechedit.models import hf_model_of, hf_parameters, set_flat
from patching.families import family


@dataclass
class Trainable:
    """One owned parameter: the model's tensor, the owned flat indices (None: all) and the trained leaf."""

    name: str  # plain HF name
    module: torch.nn.Module  # the nn.Linear (or GPT-2 Conv1D) holding ``param`` as its weight or bias
    param: torch.nn.Parameter
    index: Int[torch.Tensor, " n_owned"] | None  # flat (row-major) indices of the owned entries (None: all)
    leaf: torch.Tensor  # param itself (whole) or a 1-D copy of the owned entries
    original: torch.Tensor  # original values of the owned entries (whole tensor, or 1-D)

    @property
    def n_trained(self) -> int:
        """Number of owned (trained) entries."""
        return self.param.numel() if self.index is None else self.index.numel()

    def current(self) -> torch.Tensor:
        """Current values of the owned entries (same layout as ``original``)."""
        if self.index is None:
            return self.param.detach()
        return self.param.detach().reshape(-1)[self.index]


class TrainableSet:
    """The owned parameters of a set of components on one model, prepared for training."""

    def __init__(self, model, masks: dict[str, torch.Tensor | None]):
        if not masks:
            raise ValueError("the localization owns no parameters; nothing to train")
        params = hf_parameters(model)
        frozen = family(model).frozen  # embeddings, final norm, unembedding: reference logits rely on them
        holders = {id(m._parameters.get(kind)): m for m in hf_model_of(model).modules() if _projection(m)
                   for kind in ("weight", "bias") if m._parameters.get(kind) is not None}
        self.model = model
        self.items: list[Trainable] = []
        for name, mask in masks.items():
            if name.startswith(frozen):
                raise ValueError(f"parameter {name!r} cannot be edited (embeddings, final norm and unembedding "
                                 "stay frozen)")
            p = params[name]
            if mask is not None and id(p) not in holders:
                raise ValueError(f"parameter {name!r} is not the weight or bias of an nn.Linear or Conv1D; "
                                 "cannot train part of it")
            if mask is None:
                index, original = None, p.detach().clone()
            else:  # row-major flat indices: GPT-2/NeoX q/k/v are non-contiguous views, so never .view(-1)
                index = mask.reshape(-1).nonzero().squeeze(1).to(p.device)
                original = p.detach().reshape(-1)[index].clone()
            self.items.append(Trainable(name, holders.get(id(p)), p, index, p, original))
        self._flags: dict[int, bool] = {}
        self._hooks: list = []

    @property
    def n_params(self) -> int:
        """Number of trained entries."""
        return sum(t.n_trained for t in self.items)

    def leaves(self) -> list[torch.Tensor]:
        """The tensors the optimizer updates."""
        return [t.leaf for t in self.items]

    def begin(self) -> None:
        """Freeze every parameter, then make the owned tensors / owned-entry leaves trainable."""
        all_params = list(hf_model_of(self.model).parameters())
        self._flags = {id(p): p.requires_grad for p in all_params}
        for p in all_params:
            p.requires_grad_(False)
        partial: dict[int, list[Trainable]] = {}
        for t in self.items:
            if t.index is None:
                t.leaf = t.param
                t.param.requires_grad_(True)
            else:
                t.leaf = t.original.clone().requires_grad_(True)
                partial.setdefault(id(t.module), []).append(t)
        for ts in partial.values():
            self._hooks.append(ts[0].module.register_forward_hook(_masked_projection_hook(ts)))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy trained owned entries into the model's partly owned tensors (unowned entries untouched)."""
        for t in self.items:
            if t.index is not None:
                set_flat(t.param, t.index, t.leaf.detach())

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original values of every owned entry back (bit-exact)."""
        for t in self.items:
            if t.index is None:
                t.param.copy_(t.original)
            else:
                set_flat(t.param, t.index, t.original)
                if t.leaf is not t.param:
                    t.leaf.copy_(t.original)

    def end(self) -> None:
        """Remove the hooks, drop gradients and restore every parameter's ``requires_grad`` flag."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for p in hf_model_of(self.model).parameters():
            p.grad = None
            if id(p) in self._flags:
                p.requires_grad_(self._flags[id(p)])
        for t in self.items:
            t.leaf = t.param


def _projection(module: torch.nn.Module) -> bool:
    """An ``nn.Linear`` or a GPT-2 ``Conv1D`` (``x @ W + b`` with ``W`` stored ``[in, out]``)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _masked_projection_hook(ts: list[Trainable]):
    """Forward hook recomputing a projection's output with its owned weight/bias entries taken from the leaves."""

    def hook(module, args, output):
        values = {"weight": module.weight, "bias": module.bias}
        for t in ts:
            kind = "weight" if t.param is module.weight else "bias"
            values[kind] = t.param.detach().reshape(-1).index_put((t.index,), t.leaf).view(t.param.shape)
        weight, bias = values["weight"], values["bias"]
        if isinstance(module, torch.nn.Linear):
            return F.linear(args[0], weight, bias)
        out = args[0] @ weight
        return out if bias is None else out + bias

    return hook
