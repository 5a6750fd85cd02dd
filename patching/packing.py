"""Packed forward passes: the real tokens of a left-padded batch laid end to end in a few short sequences.

A batch of short prompts padded to its longest one spends much of its compute on padding (64 CounterFact prompts
of 6-14 tokens: 40 % padding), and prompts rendered from one template repeat its opening tokens in every row.
``plan`` lays the rows one after another in sequences of about ``capacity`` tokens and, with
``share_prefixes``, lays a row's opening tokens only once when they equal those of the sequence's first row (its
*stem*): the row then attends to the stem's copy of them. Every row keeps its own position ids (0, 1, ...), and
an explicit attention mask lets each token see exactly the tokens of its own row up to itself, so a row's hidden
states equal those of the padded forward up to float rounding (a causal model's state at a position depends only
on the tokens up to it). ``Packing.pack`` moves a padded tensor into the packed layout and ``Packing.unpack``
back (zeros at padding), both differentiable, so callers keep working in the padded layout.

``tests/test_families.py`` checks packed = padded (hidden states, and loss and gradients of ``answer_loss``) for
every supported family in float32 and bfloat16. Short sequences keep the dense attention over a packed sequence
cheap (its cost grows with the square of the sequence length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

CAPACITY = 64  # new tokens per packed sequence, at least ...
SPAN = 4  # ... this many times the longest row (long few-shot prompts share their opening shots within it)


@dataclass(frozen=True)
class Packing:
    """Where each real token of a left-padded ``[batch, width]`` batch sits in the packed ``[k, length]`` layout."""

    batch: int
    width: int
    ids: Int[torch.Tensor, "k length"]
    positions: Int[torch.Tensor, "k length"]  # each token's position in its own row
    allowed: Bool[torch.Tensor, "k length length"]  # query slot may attend to key slot
    read: Int[torch.Tensor, " n_real"]  # packed flat slot of each real padded token (row-major, many-to-one)
    real: Int[torch.Tensor, " n_real"]  # flat padded index of each real token
    owner: Int[torch.Tensor, " n_slots"]  # flat padded index each used packed slot was laid from
    slots: Int[torch.Tensor, " n_slots"]  # the used packed slots

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, width, ...]`` (padded) -> ``[k, length, ...]`` (packed; zeros in unused slots)."""
        k, length = self.ids.shape
        flat = x.reshape(self.batch * self.width, *x.shape[2:])
        out = flat.new_zeros(k * length, *x.shape[2:])
        src = flat.index_select(0, self.owner.to(x.device))
        return out.index_copy(0, self.slots.to(x.device), src).reshape(k, length, *x.shape[2:])

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """``[k, length, ...]`` (packed) -> ``[batch, width, ...]`` (padded; zeros at padding)."""
        flat = y.reshape(-1, *y.shape[2:])
        out = flat.new_zeros(self.batch * self.width, *y.shape[2:])
        src = flat.index_select(0, self.read.to(y.device))
        return out.index_copy(0, self.real.to(y.device), src).reshape(self.batch, self.width, *y.shape[2:])

    def mask(self, implementation: str, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """The ``[k, 1, length, length]`` attention mask Hugging Face takes as given: boolean (keep = True) for
        SDPA, additive (0 or the dtype's minimum) for eager attention; ``window``: a sliding-window layer's mask
        (a token sees the previous ``window`` positions of its row, itself included)."""
        allowed = self.allowed
        if window is not None:
            allowed = allowed & (self.positions[:, :, None] - self.positions[:, None, :] < window)
        allowed = allowed[:, None]
        if implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def plan(ids: Int[torch.Tensor, "batch width"], mask: Int[torch.Tensor, "batch width"],
         capacity: int = CAPACITY, pad_id: int = 0, share_prefixes: bool = True, span: int = SPAN,
         shareable: Int[torch.Tensor, " batch"] | None = None) -> Packing:
    """Lay the real tokens of a left-padded batch into sequences of at most ``capacity`` new tokens each (at least
    ``span`` times the longest row); with
    ``share_prefixes`` rows are ordered so rows from one template are neighbours, and a row's opening tokens equal
    to its sequence's stem are not laid again. ``shareable``: per row, at most this many opening tokens may be
    shared (in both the row and its stem), for callers that alter some tokens per row (e.g. noise a subject)."""
    batch, width = ids.shape
    lengths = mask.sum(1).tolist()
    rows = [ids[i, width - n:].tolist() for i, n in enumerate(lengths)]
    order = sorted(range(batch), key=lambda i: rows[i]) if share_prefixes else list(range(batch))
    capacity = max(capacity, span * max(lengths, default=1))
    seqs: list[list[tuple[int, int]]] = []  # per sequence: (row, tokens shared with the stem)
    used = 0
    for i in order:
        shared = _common(rows[i], rows[seqs[-1][0][0]]) if share_prefixes and seqs else 0
        if shareable is not None and shared:
            shared = min(shared, int(shareable[i]), int(shareable[seqs[-1][0][0]]))
        if not seqs or used + lengths[i] - shared > capacity:
            seqs.append([])
            used, shared = 0, 0
        seqs[-1].append((i, shared))
        used += lengths[i] - shared
    length = max(sum(lengths[i] - c for i, c in seq) for seq in seqs)
    packed = torch.full((len(seqs), length), pad_id, dtype=ids.dtype)
    positions = torch.zeros((len(seqs), length), dtype=torch.long)
    allowed = torch.zeros((len(seqs), length, length), dtype=torch.bool)
    slot_of: dict[tuple[int, int], int] = {}  # (row, position) -> flat packed slot
    owner, slots = [], []
    for s, seq in enumerate(seqs):
        stem, at = seq[0][0], 0
        for i, shared in seq:
            base = width - lengths[i]
            own = []
            for p in range(lengths[i]):
                if p < shared:
                    slot_of[i, p] = slot_of[stem, p]
                    continue
                packed[s, at] = rows[i][p]
                positions[s, at] = p
                slot_of[i, p] = s * length + at
                own.append((at, p))
                owner.append(i * width + base + p)
                slots.append(s * length + at)
                at += 1
            mine = [slot_of[i, p] - s * length for p in range(lengths[i])]
            for q, p in own:  # each new token sees its row's tokens up to itself (the stem's shared ones included)
                allowed[s, q, mine[: p + 1]] = True
        for q in range(at, length):  # unused tail: attends to itself only (no empty softmax)
            allowed[s, q, q] = True
            positions[s, q] = 0
    real = [i * width + width - lengths[i] + p for i in range(batch) for p in range(lengths[i])]
    read = [slot_of[i, p] for i in range(batch) for p in range(lengths[i])]
    return Packing(batch, width, packed, positions, allowed, torch.tensor(read), torch.tensor(real),
                   torch.tensor(owner), torch.tensor(slots))
