"""What the experiment trackers share: each finished evaluation logged once, in the order the run
finished them, at step = how many had finished (so the best-so-far curve is over the budget spent).

A resumed run continues the same tracker run and logs only what it has not logged:
RUN/trackers.json keeps each tracker's run id and how many evaluations it has logged (the order is
the store's event log's, in which each result was told). Delete it to log the whole run again to new tracker runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from evomerge.files import write_atomically
from evomerge.recipe.loading import Recipe
from evomerge.run.store import Evaluation, RunStore

LEDGER = "trackers.json"


@dataclass(frozen=True)
class RunInfo:
    """What a tracker names and describes the run with."""

    directory: Path
    name: str
    params: Dict[str, Any]  # logged once, when the tracker's run is created
    recipe_text: str
    gene_names: List[str]
    objective_names: List[str]  # the fitness's terms, one per task (a custom fitness's are numbered)

    @classmethod
    def of(cls, recipe: Recipe, store: RunStore) -> "RunInfo":
        spec = recipe.spec
        genes = store.meta("genes")
        params = {"recipe": str(recipe.path), "searcher": spec.searcher.name, "seed": spec.seed,
                  "budget": spec.budget.evaluations if spec.budget else None, "objectives": spec.objectives,
                  "tasks": ", ".join(t.name for t in spec.tasks)}
        params.update({f"gene/{g['name']}": f"[{g['low']}, {g['high']}]" for g in genes})
        return cls(store.directory, store.directory.resolve().name, params, recipe.text,
                   [g["name"] for g in genes], [f"{t.name}.{t.metric}" for t in spec.tasks])


def record(evaluation: Evaluation, info: RunInfo, best: Optional[float]) -> Dict[str, float]:
    """An evaluation as numbers: genes, fitness and objectives, every task metric, documents, timings, status."""
    values: Dict[str, Optional[float]] = {
        "evaluation": evaluation.id, "generation": evaluation.generation, "fitness": evaluation.fitness,
        "best_fitness": best, "documents": evaluation.documents,
        "materialize_seconds": evaluation.materialize_seconds, "evaluate_seconds": evaluation.evaluate_seconds,
        "status/failed": float(evaluation.failed), "status/raced": float(evaluation.raced),
    }
    names = info.objective_names
    for index, value in enumerate(evaluation.objectives or []):
        values[f"objective/{names[index] if index < len(names) else index}"] = value
    for task, metrics in evaluation.metrics.items():
        values.update({f"{task}/{metric}": value for metric, value in metrics.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)})
    values.update({f"gene/{name}": value for name, value in zip(info.gene_names, evaluation.genotype)})
    return {key: float(value) for key, value in values.items() if value is not None}


class Ledger:
    """RUN/trackers.json: tracker name -> {"run_id", "logged"}."""

    def __init__(self, directory: Path):
        self.path = directory / LEDGER

    def get(self, tracker: str) -> Dict[str, Any]:
        entries = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        return entries.get(tracker, {})

    def put(self, tracker: str, entry: Dict[str, Any]) -> None:
        entries = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        entries[tracker] = entry
        write_atomically(self.path, json.dumps(entries, indent=1) + "\n")


class Tracker:
    """A run observer that logs to an experiment tracker; subclasses open the tracker's run, log one
    evaluation and publish the report."""

    name = ""

    def __init__(self, info: RunInfo):
        self.info = info
        self.ledger = Ledger(info.directory)
        self.run_id: Optional[str] = None
        self.logged = 0
        self.best: Optional[float] = None

    def rewrite(self, finished: Sequence[Evaluation]) -> None:
        order = list(finished)  # as the run finished them (its log's order)
        self._opened()
        self.best = max((e.fitness for e in order[:self.logged] if e.ok), default=None)
        for evaluation in order[self.logged:]:
            self.added(evaluation)

    def added(self, evaluation: Evaluation) -> None:
        self._opened()
        if evaluation.ok and (self.best is None or evaluation.fitness > self.best):
            self.best = evaluation.fitness
        self.log(self.logged + 1, record(evaluation, self.info, self.best), evaluation)
        self.logged += 1
        self.ledger.put(self.name, {"run_id": self.run_id, "logged": self.logged})

    def _opened(self) -> None:
        if self.run_id is None:
            entry = self.ledger.get(self.name)
            self.run_id = self.open(entry.get("run_id"))
            self.logged = entry.get("logged", 0)
            self.ledger.put(self.name, {"run_id": self.run_id, "logged": self.logged})

    def open(self, run_id: Optional[str]) -> str:
        """Continue the tracker's run `run_id`, or start one (None); its id."""
        raise NotImplementedError

    def log(self, step: int, values: Dict[str, float], evaluation: Evaluation) -> None:
        raise NotImplementedError

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to let go of unless the tracker holds a run open."""
