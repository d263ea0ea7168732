"""A searcher rebuilt from the store: a fresh one with the run's seed replays the event log (asks,
racing stages, tells, in order), so a resumed run goes on exactly where it stopped."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.run.pruner import Pruner
from evomerge.run.store import Evaluation, RunStore
from evomerge.searchers import Fitness, Searcher


def flat_scores(evaluation: Evaluation) -> Dict[str, float]:
    """'task.metric' -> value (and 'custom.x'), standard errors left out: what a searcher may read."""
    return {f"{task}.{metric}": value for task, metrics in evaluation.metrics.items()
            for metric, value in metrics.items() if "_stderr" not in metric}


def searcher_fitness(evaluation: Evaluation, separate: bool) -> Fitness:
    """What the searcher is told: None for a failure, the objectives or the one fitness."""
    if evaluation.failed:
        return None
    return tuple(evaluation.objectives) if separate else (evaluation.fitness,)


def tell(searcher: Searcher, evaluation: Evaluation, separate: bool) -> None:
    searcher.tell(evaluation.id, searcher_fitness(evaluation, separate), flat_scores(evaluation))


def replay(searcher: Searcher, store: RunStore, from_unit: Callable[[np.ndarray], np.ndarray],
           separate: bool, pruner: Optional[Pruner] = None) -> Searcher:
    """`searcher` (fresh) after every logged event, racing stages shown to `pruner` (made with it);
    refuses a log it does not reproduce."""
    rows = {e.id: e for e in store.evaluations.everything()}
    for event in store.events.all():
        if event.kind == "ask":
            searcher.replay_inputs(event.data["inputs"])
            proposals = searcher.ask()
            if [p.id for p in proposals] != event.data["ids"] or not all(
                    np.array_equal(from_unit(p.genotype), rows[p.id].genotype) for p in proposals):
                raise EvomergeError(f"the searcher does not replay this run's log (at evaluations "
                                    f"{event.data['ids']}); was the run made with other versions of evomerge, "
                                    "Optuna or pycma?", path=store.directory)
        elif event.kind == "stage":
            if pruner is not None:
                pruner.replayed(event.evaluation, event.data["stage"], event.data["estimate"])
        else:
            tell(searcher, rows[event.evaluation], separate)
    searcher.recorded = []
    return searcher
