"""The tree from the distances (Biopython's neighbor joining) and layer groups from the per-layer profile."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.tree.distances import Distances


def neighbor_joining(distances: Distances, root: Optional[str] = None):
    """Biopython's neighbor-joining tree, rooted at `root` (an outgroup) or else at its midpoint.

    Neighbor joining can give slightly negative branch lengths when the distances are not
    exactly additive; they are set to zero, as is usual.
    """
    from Bio.Phylo.TreeConstruction import DistanceMatrix, DistanceTreeConstructor

    matrix = distances.matrix
    lower = [[float(matrix[i, j]) for j in range(i + 1)] for i in range(len(distances.names))]
    tree = DistanceTreeConstructor().nj(DistanceMatrix(list(distances.names), lower))
    if root is not None:
        tree.root_with_outgroup(root)
    else:
        tree.root_at_midpoint()
    for clade in tree.find_clades():
        if not clade.is_terminal():
            clade.name = None
        if clade.branch_length is not None and clade.branch_length < 0:
            clade.branch_length = 0.0
    tree.rooted = True
    return tree


def suggest_layer_groups(profile: Sequence[float], groups: int) -> List[Tuple[int, int]]:
    """The split of the layers into `groups` contiguous ranges [start, end) that best separates
    layers that differ much from layers that differ little (least squares, by dynamic programming)."""
    values = np.asarray(profile, dtype=float)
    n = len(values)
    if not 1 <= groups <= n:
        raise EvomergeError(f"expected between 1 and {n} groups (the models have {n} layers), got {groups}",
                            key="--suggest-groups")
    prefix, prefix_sq = np.concatenate([[0], np.cumsum(values)]), np.concatenate([[0], np.cumsum(values**2)])

    def cost(a: int, b: int) -> float:  # squared deviation of values[a:b] from their mean
        return prefix_sq[b] - prefix_sq[a] - (prefix[b] - prefix[a]) ** 2 / (b - a)

    best = np.full((groups + 1, n + 1), np.inf)
    cut = np.zeros((groups + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, groups + 1):
        for b in range(k, n + 1):
            options = [best[k - 1, a] + cost(a, b) for a in range(k - 1, b)]
            cut[k, b] = k - 1 + int(np.argmin(options))
            best[k, b] = min(options)
    ranges, end = [], n
    for k in range(groups, 0, -1):
        ranges.append((int(cut[k, end]), end))
        end = int(cut[k, end])
    return ranges[::-1]
