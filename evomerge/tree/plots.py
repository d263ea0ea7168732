"""Pictures for `evomerge tree`: the family tree (with scores beside the leaves) and the layer heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evomerge.tree.distances import KINDS, Distances, tensor_place  # noqa: E402


def draw_tree(tree, path: Path, scores: Optional[Dict[str, Dict[str, float]]] = None) -> Path:
    """Biopython's drawing with branch lengths on the branches; with scores, one column per task
    beside the leaves (Biopython puts the k-th leaf at height k + 1)."""
    from Bio import Phylo

    leaves = tree.get_terminals()
    tasks = list(next(iter(scores.values()))) if scores else []
    height = 1.2 + 0.45 * len(leaves)
    fig = plt.figure(figsize=(7 + 1.1 * len(tasks), height))
    grid = fig.add_gridspec(1, 2 if tasks else 1, width_ratios=[5, 1.1 * len(tasks)] if tasks else [1], wspace=0.05)
    axes = fig.add_subplot(grid[0, 0])
    Phylo.draw(tree, axes=axes, do_show=False,
               branch_labels=lambda clade: f"{clade.branch_length:.2g}" if clade.branch_length else None)
    axes.set_title("Family tree from the weights (branch length: relative squared L2 distance)", fontsize=10)
    axes.set_xlabel("distance from the root")
    axes.set_ylabel("")
    axes.set_yticks([])
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    if tasks:
        side = fig.add_subplot(grid[0, 1], sharey=axes)
        values = np.array([[scores[leaf.name][task] for task in tasks] for leaf in leaves])
        side.imshow(values, cmap="viridis", vmin=0, vmax=max(1.0, float(values.max())), aspect="auto",
                    extent=(-0.5, len(tasks) - 0.5, len(leaves) + 0.5, 0.5))
        for row, leaf_values in enumerate(values):
            for column, value in enumerate(leaf_values):
                side.text(column, row + 1, f"{value:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if value < 0.6 else "black")
        side.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        side.tick_params(axis="y", left=False, labelleft=False)
        side.set_title("scores", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_layers(distances: Distances, path: Path) -> Path:
    """One panel per module kind; rows: each model against its nearest relative; columns: layers
    (and the tensors outside the layers: embeddings, output head, final norm)."""
    places = [tensor_place(tensor) for tensor in distances.tensors]
    layers = sorted({layer for layer, _ in places if layer is not None})
    columns = [None] + layers
    names = distances.names
    nearest = distances.nearest()
    grids = {kind: np.full((len(names), len(columns)), np.nan) for kind in KINDS}
    for i, j in enumerate(nearest):
        for (layer, kind), value in distances.cells(i, j).items():
            grids[kind][i, columns.index(layer)] = value
    kinds = [kind for kind in KINDS if not np.isnan(grids[kind]).all()]
    shown = {kind: [c for c in range(len(columns)) if not np.isnan(grids[kind][:, c]).all()] for kind in kinds}
    cells = sum(map(len, shown.values()))
    fig, panels = plt.subplots(1, len(kinds), figsize=(2.5 + min(0.45 * cells, 24) + 1.5 * len(kinds), 1.2 + 0.4 * len(names)),
                               squeeze=False, sharey=True, width_ratios=[len(shown[kind]) for kind in kinds])
    labels = ["emb/out"] + [str(layer) for layer in layers]
    for axes, kind in zip(panels[0], kinds):
        image = axes.imshow(grids[kind][:, shown[kind]], cmap="magma", aspect="auto")
        axes.set_xticks(range(len(shown[kind])), [labels[c] for c in shown[kind]],
                        rotation=90 if len(shown[kind]) > 12 else 0, fontsize=8)
        axes.set_xlabel("layer")
        axes.set_title({"attention": "attention", "mlp": "MLP", "other": "embeddings and norms"}[kind], fontsize=10)
        fig.colorbar(image, ax=axes, shrink=0.8)
    panels[0][0].set_yticks(range(len(names)), [f"{names[i]} vs {names[j]}" for i, j in enumerate(nearest)], fontsize=8)
    fig.suptitle("How much each layer differs from the nearest relative (relative squared L2)", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
