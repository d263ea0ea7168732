"""A quality-diversity run's map, as the run store holds it (run/store/archive.py): an elite chosen by
its cell or by the per-task scores it is nearest to (for `evomerge export --cell / --measures`), the
Pareto front over the measures (for the report), and where an evaluation sits on the map (for its card)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.recipe import layout
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.worker import Worker
from evomerge.searchers import Archive, Elite
from evomerge.searchers.qd import measure


def numbers(text: str, kind: type, source: Path, key: str) -> List:
    """'3,7' -> [3, 7] (or floats), or one line naming the option."""
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise EvomergeError(f"expected comma-separated {kind.__name__}s, got {text!r}", path=source, key=key) from None


def chosen_elite(archive: Optional[Archive], source: Path, cell: Optional[str] = None,
                 measures: Optional[str] = None) -> Elite:
    """The elite in `cell` ('I,J': its index per measure; a CVT cell's single index), or the one whose
    measures are nearest (Euclidean, in each measure's share of its range) to `measures` ('a,b')."""
    key = "--cell" if cell is not None else "--measures"
    if archive is None:
        raise EvomergeError("this run kept no map (its searcher is not `qd`)", path=source, key=key)
    if not archive.elites:
        raise EvomergeError("the run's map is empty", path=source, key=key)
    wanted = numbers(cell, int, source, key) if cell is not None else numbers(measures, float, source, key)
    width = len(archive.shape) if cell is not None else len(archive.measures)
    if len(wanted) != width:
        raise EvomergeError(f"expected {width} comma-separated values ({', '.join(archive.measures)}), "
                            f"got {len(wanted)}", path=source, key=key)
    if cell is not None:
        found = next((e for e in archive.elites if list(e.cell) == wanted), None)
        if found is None:
            raise EvomergeError(f"cell {cell} of the map is empty; filled cells: "
                                f"{', '.join(','.join(map(str, e.cell)) for e in archive.elites)}", path=source, key=key)
        return found
    spans = np.array([high - low for low, high in archive.ranges])
    return min(archive.elites, key=lambda e: (float(np.linalg.norm((np.array(e.measures) - wanted) / spans)),
                                              -e.objective))


def front(archive: Archive) -> List[Elite]:
    """The elites no other elite matches or beats on every measure (all maximized): the trade-offs."""

    def dominates(a: Elite, b: Elite) -> bool:
        return all(x >= y for x, y in zip(a.measures, b.measures)) and a.measures != b.measures

    return [e for e in archive.elites if not any(dominates(other, e) for other in archive.elites)]


def map_report(archive: Optional[Archive], recipe: Recipe, worker: Worker) -> Dict[str, Any]:
    """What the report adds for a `qd` run: the map's Pareto front and where each parent sits on the map
    (scored by the search's own scorer, as the search scored its candidates); nothing for other runs."""
    if archive is None:
        return {}
    rows = [{"cell": list(e.cell), "id": e.evaluation, "fitness": e.objective, "measures": list(e.measures)}
            for e in front(archive)]
    parents: Dict[str, List[float]] = {}
    if worker.scorer is not None:
        for _, reference in sorted(layout.parent_references(build_space(recipe).largest_stages()), key=str):
            try:
                worker.materializer.load_parent(reference)
            except ValueError:  # a parent that does not supply the output model's tensors (slices recipes)
                continue
            scores = {f"{task}.{key}": value for task, metrics in worker.scorer.score().items()
                      for key, value in metrics.items()}
            values = [measure(scores, key) for key in archive.measures]
            if None not in values:  # a custom measure: the parent is not marked
                parents[Path(reference.model.path).name] = values
    return {"map_front": {"measures": list(archive.measures), "elites": rows}, "map_parents": parents}


def place(archive: Optional[Archive], evaluation: int) -> Optional[str]:
    """Where an evaluation sits on the map, in a sentence; None if it is no cell's elite."""
    elite = next((e for e in archive.elites if e.evaluation == evaluation), None) if archive else None
    if elite is None:
        return None
    shape = " × ".join(map(str, archive.shape))
    scores = ", ".join(f"{name} {value:.4f}" for name, value in zip(archive.measures, elite.measures))
    return (f"cell {','.join(map(str, elite.cell))} of the {shape} {archive.kind} map over "
            f"{', '.join(archive.measures)} ({scores}; fitness {elite.objective:.4f}, the best in its cell; "
            f"{len(archive.elites)} cells filled)")
