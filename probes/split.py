"""Seeded stratified train/test splits and label checks shared by the probes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Int


def encode_labels(y: Sequence | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Return (sorted distinct classes, class index per example) for any hashable, sortable labels."""
    arr = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("no labels given")
    classes, idx = np.unique(arr, return_inverse=True)
    return classes, idx.astype(np.int64)


def label_name(value):
    """A class label as a plain Python value (numpy scalars unwrapped) for messages and JSON."""
    return value.item() if hasattr(value, "item") else value


def rare_classes(y: Sequence | np.ndarray | torch.Tensor, min_count: int) -> dict:
    """Classes with fewer than ``min_count`` examples, mapped to their counts."""
    classes, idx = encode_labels(y)
    counts = np.bincount(idx, minlength=len(classes))
    return {label_name(classes[c]): int(counts[c]) for c in range(len(classes)) if counts[c] < min_count}


def stratified_split(
    y: Sequence | np.ndarray | torch.Tensor, test_size: float = 0.25, seed: int = 0, min_per_split: int = 2
) -> tuple[Int[torch.Tensor, " train"], Int[torch.Tensor, " test"]]:
    """Seeded stratified split: each class contributes ``round(test_size * count)`` examples to the test set.

    Every class must keep at least ``min_per_split`` examples on each side; otherwise ValueError names the
    classes that are too small (drop them first, e.g. with ``rare_classes``). Returns sorted index tensors.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    classes, idx = encode_labels(y)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to split, got {len(classes)} ({classes.tolist()})")
    counts = np.bincount(idx, minlength=len(classes))
    small = {label_name(classes[c]): int(counts[c]) for c in range(len(classes)) if counts[c] < 2 * min_per_split}
    if small:
        raise ValueError(f"class(es) with too few examples for a split with >= {min_per_split} per class on each "
                         f"side (need >= {2 * min_per_split}): {small}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(classes)):
        members = np.flatnonzero(idx == c)
        rng.shuffle(members)
        n_test = int(np.clip(round(test_size * len(members)), min_per_split, len(members) - min_per_split))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return torch.tensor(sorted(train), dtype=torch.long), torch.tensor(sorted(test), dtype=torch.long)
