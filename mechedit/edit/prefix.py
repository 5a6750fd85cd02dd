"""Training forward passes that start at the earliest trained layer (the frozen prefix is computed once).

Layers below the earliest trained layer ``L`` hold no trained entry and the training prompts come from fixed
pools, so the residual stream entering layer ``L`` never changes during an edit. ``PrefixCache`` computes it
once per pool row (original weights, no grad) and each step runs only layers ``L..`` on it. The HF base model's
own forward does it, for every family in ``patching.families``: layers below ``L`` are swapped for
pass-throughs for the call and a pre-hook hands layer ``L`` the cached residual, so the model itself builds its
masks (Gemma-2's sliding window included), rotary or learned positions and final norm; only the embedding
lookup below ``L`` is recomputed. Before use it checks the fast path against the full forward on a few rows; if
they disagree it warns and falls back to full forwards, so results never depend on the shortcut. Every
training forward runs packed (``patching.packing``): the prompts' padding costs nothing.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from jaxtyping import Float, Int

from mechedit.tokens import pad_left
from patching.families import decoder_layers, final_hidden, packed_hidden
from patching.model import Model
from patching.packing import plan

log = logging.getLogger(__name__)

CACHE_BATCH = 64
CHECK_ROWS = 4
CHECK_ATOL = 1e-4


def full_hidden(
    model: Model, ids: Int[torch.Tensor, "b t"], mask: Int[torch.Tensor, "b t"]
) -> Float[torch.Tensor, "b t d"]:
    """Final (normed) hidden states of the HF model under the bridge (callers unembed the positions they need),
    run packed (``patching.packing``: no compute on padding; zeros there)."""
    return final_hidden(model, ids, mask, pack=True)


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped decoder layer: returns its input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def _skip_below(model, start: int, x: Float[torch.Tensor, "b t d"]):
    """Within the block, layers below ``start`` pass their input through and layer ``start`` receives ``x``."""
    modules = decoder_layers(model)
    holder = modules[start]

    def inject(mod, args, kwargs):
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    hook = holder.register_forward_pre_hook(inject, with_kwargs=True)
    originals = [modules[i] for i in range(start)]
    try:
        for i in range(start):
            modules[i] = _PassThrough()
        yield
    finally:
        for i, m in enumerate(originals):
            modules[i] = m
        hook.remove()


def _from_layer(model, start: int, ids: Int[torch.Tensor, "b t"], x: Float[torch.Tensor, "b t d"],
                mask: Int[torch.Tensor, "b t"]):
    """Run decoder layers ``start..`` and the final norm on residual-stream input ``x`` (ids only embed), packed."""
    p = plan(ids, mask)
    with _skip_below(model, start, p.pack(x)):
        return p.unpack(packed_hidden(model, p))


class _Grabbed(Exception):
    """Raised by the pre-hook of layer ``start`` once it holds its input: the layers above it need not run."""


@torch.no_grad()
def _resid_in(model, start: int, rows: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """Residual stream entering layer ``start`` for each row ([len, d]), original weights (the forward stops
    there)."""
    layer = decoder_layers(model)[start]
    out: list[torch.Tensor] = []
    for s in range(0, len(rows), CACHE_BATCH):
        ids, mask = pad_left(rows[s:s + CACHE_BATCH], pad_id)
        p = plan(ids, mask)
        seen: list[torch.Tensor] = []

        def grab(mod, args, kwargs, seen=seen):
            seen.append((args[0] if args else kwargs["hidden_states"]).detach())
            raise _Grabbed

        hook = layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            packed_hidden(model, p)
        except _Grabbed:
            pass
        finally:
            hook.remove()
        x = p.unpack(seen[0])
        out += [x[i][mask[i].bool()].clone() for i in range(len(ids))]
    return out


class PrefixCache:
    """Hidden states for training batches, computed from the earliest trained layer when that is exact."""

    def __init__(self, model, start: int, pools: dict[str, list[list[int]]], pad_id: int, enabled: bool = True):
        self.model, self.start, self.pools, self.pad_id = model, start, pools, pad_id
        self.cache: dict[str, list[torch.Tensor]] = {}
        self.active = False
        if enabled and start > 0:
            self.cache = {name: _resid_in(model, start, rows, pad_id) for name, rows in pools.items() if rows}
            self.active = self._check()

    def _check(self) -> bool:
        """Compare the fast path with the full forward on a few rows of the first pool."""
        name = next(iter(self.cache), None)
        if name is None:
            return False
        items = [(name, i) for i in range(min(CHECK_ROWS, len(self.pools[name])))]
        with torch.no_grad():
            fast, mask = self._fast(items)
            ids, mask_full = pad_left([self.pools[n][i] for n, i in items], self.pad_id)
            full = final_hidden(self.model, ids, mask_full)  # padded and unpacked: the plainest reference
        ok = bool(torch.allclose(fast[mask.bool()], full[mask_full.bool()], atol=CHECK_ATOL, rtol=1e-4))
        if not ok:
            log.warning("starting the forward at layer %d does not reproduce the full forward for this "
                        "architecture; using full forward passes (slower, same result)", self.start)
        return ok

    def _fast(self, items: list[tuple[str, int]]):
        x, mask = pad_left([self.cache[n][i] for n, i in items])
        ids, _ = pad_left([self.pools[n][i] for n, i in items], self.pad_id)
        return _from_layer(self.model, self.start, ids, x, mask), mask

    def hidden(self, items: list[tuple[str, int]]) -> tuple[Float[torch.Tensor, "b t d"], Int[torch.Tensor, "b t"]]:
        """Final hidden states and attention mask of a left-padded batch of pool rows ``(pool, index)``."""
        if self.active:
            return self._fast(items)
        ids, mask = pad_left([self.pools[n][i] for n, i in items], self.pad_id)
        return full_hidden(self.model, ids, mask), mask
