"""The winner's ancestry: the edges back through recorded parents, their layout by generation, and the figure."""

from __future__ import annotations

from collections import deque
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from evomerge.run.store import Evaluation

LINEAGE_DEPTH = 6  # ancestors further back than this make the tree unreadable

Edge = Tuple[int, int]  # (child id, parent id)
Position = Tuple[float, float]


def ancestry(evaluations: Mapping[int, Evaluation], root: int, depth: int = LINEAGE_DEPTH) -> List[Edge]:
    """(child, parent) edges from `root` back through recorded parents, breadth-first, each edge once."""
    edges: List[Edge] = []
    distance = {root: 0}
    queue = deque([root])
    while queue:
        child = queue.popleft()
        if distance[child] == depth:
            continue
        for parent in dict.fromkeys(evaluations[child].parents):
            if parent not in evaluations:
                continue
            edges.append((child, parent))
            if parent not in distance:
                distance[parent] = distance[child] + 1
                queue.append(parent)
    return edges


def lineage_layout(evaluations: Mapping[int, Evaluation], root: int, edges: Sequence[Edge]) -> Dict[int, Position]:
    """Node positions: x is the generation (the root right-most), y orders each column by its children's positions."""
    nodes = {root} | {n for edge in edges for n in edge}
    columns: Dict[int, List[int]] = {}
    for node in nodes:
        columns.setdefault(evaluations[node].generation, []).append(node)
    positions: Dict[int, Position] = {}
    for generation in sorted(columns, reverse=True):
        ordered = sorted(columns[generation], key=lambda node: (-_mean_child_height(node, edges, positions), node))
        for index, node in enumerate(ordered):
            positions[node] = (float(generation), (len(ordered) - 1) / 2 - index)
    return positions


def _mean_child_height(node: int, edges: Sequence[Edge], positions: Mapping[int, Position]) -> float:
    """Placing a parent level with its children keeps edges short and uncrossed."""
    heights = [positions[child][1] for child, parent in edges if parent == node and child in positions]
    return float(np.mean(heights)) if heights else 0.0


def draw_lineage(evaluations: Sequence[Evaluation], root: int) -> Tuple[Figure, str]:
    """The winner's family tree, and the sentence that explains it."""
    by_id = {e.id: e for e in evaluations}
    edges = ancestry(by_id, root)
    positions = lineage_layout(by_id, root, edges)
    generations = sorted({x for x, _ in positions.values()})
    height = max(sum(1 for x, _ in positions.values() if x == g) for g in generations)
    figure = Figure(figsize=(max(5.0, 2.0 * len(generations)), max(2.5, 0.75 * height + 1.2)), layout="constrained")
    axes = figure.add_subplot()
    boxes = {node: axes.text(x, y, _node_label(by_id[node]), ha="center", va="center", fontsize=7,
                             bbox={"boxstyle": "round", "facecolor": _node_colour(by_id[node], root),
                                   "edgecolor": "0.3"})
             for node, (x, y) in sorted(positions.items())}
    for child, parent in edges:
        axes.annotate("", xy=positions[child], xytext=positions[parent],
                      arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 0.8, "shrinkA": 2, "shrinkB": 2,
                                  "patchA": boxes[parent].get_bbox_patch(), "patchB": boxes[child].get_bbox_patch()})
    axes.set_xticks(generations, [f"gen {g:.0f}" for g in generations])
    axes.set_xlim(generations[0] - 0.6, generations[-1] + 0.6)
    axes.set_ylim(-height / 2 - 0.1, height / 2 + 0.1)
    axes.set_yticks([])
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    truncated = any(p in by_id and p not in positions for n in positions for p in by_id[n].parents)
    axes.set_title(f"Ancestry of the winner #{root}" + (f" (up to {LINEAGE_DEPTH} steps back)" if truncated else ""))
    return figure, (f"Where the winner #{root} came from: {len(positions) - 1} ancestors by generation, each "
                    "labelled with the operator that produced it and its fitness; arrows point from parent to child.")


def _node_colour(evaluation: Evaluation, root: int) -> str:
    if evaluation.id == root:
        return "gold"
    return "lightsteelblue" if evaluation.ok else "mistyrose"


def _node_label(evaluation: Evaluation) -> str:
    fitness = f"{evaluation.fitness:.3f}" if evaluation.ok else "failed"
    return f"#{evaluation.id}\n{evaluation.operator or '?'}\n{fitness}"
