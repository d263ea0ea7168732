"""`evomerge tree`: how models are related, from their weights alone.

Distances between models streamed two tensors at a time (distances.py), a neighbor-joining
tree and layer groups for a recipe (joining.py), pictures (plots.py), and the command's
files (family.py). Beside the search: nothing here knows a run.
"""

from evomerge.tree.distances import (
           Distances,
           ModelWeights,
           leaf_names,
           measure_distances,
           open_models,
)
from evomerge.tree.family import write_family_tree
from evomerge.tree.joining import neighbor_joining, suggest_layer_groups

__all__ = ["Distances", "ModelWeights", "leaf_names", "measure_distances", "neighbor_joining", "open_models",
           "suggest_layer_groups", "write_family_tree"]
