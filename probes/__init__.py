"""Fast linear probes over every layer: one-pass activation collection and batched probe fitting.

Depends only on torch / transformer_lens (+ numpy, jaxtyping, tqdm), never on ``mechedit``.
"""

from probes.collect import check_hook_names, collect_activations, layer_hooks, n_layers_of
from probes.direction import MeanDiffProbe
from probes.logistic import LogisticProbe, ProbeConvergenceWarning
from probes.ridge import RidgeProbe
from probes.split import encode_labels, rare_classes, stratified_split

__all__ = [
    "LogisticProbe", "MeanDiffProbe", "ProbeConvergenceWarning", "RidgeProbe", "check_hook_names",
    "collect_activations", "encode_labels", "layer_hooks", "n_layers_of", "rare_classes", "stratified_split",
]
