"""A searcher rebuilt from the store: a fresh one with the run's seed replays the event log (asks,
racing stages, tells, in order), so a resumed run goes on exactly where it stopped."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.run.pruner import Pruner
from evomerge.run.store import Evaluation, RunStore
from evomerge.searchers import Fitness, Searcher


def searcher_fitness(evaluation: Evaluation, separate: bool) -> Fitness:
    """What the searcher is told: None for a failure, the objectives or the one fitness."""
    if evaluation.failed:
        return None
    return tuple(evaluation.objectives) if separate else (evaluation.fitness,)


def tell(searcher: Searcher, evaluation: Evaluation, separate: bool) -> None:
    searcher.tell(evaluation.id, searcher_fitness(evaluation, separate), evaluation.flat_scores())


def replay(searcher: Searcher, store: RunStore, from_unit: Callable[[np.ndarray], np.ndarray],
           separate: bool, pruner: Optional[Pruner] = None) -> Searcher:
    """`searcher` (fresh) after every logged event, racing stages shown to `pruner` (made with it);
    refuses, in one line, a log it does not reproduce.

    A result logged twice (two processes on one run, before runs were locked) is heard once, as it was first."""
    rows = {e.id: e for e in store.evaluations.everything()}
    told = set()
    for event in store.events.all():
        if event.kind == "ask":
            searcher.replay_inputs(event.data["inputs"])
            proposals = searcher.ask()
            if [p.id for p in proposals] != event.data["ids"] or not all(
                    p.id in rows and np.array_equal(from_unit(p.genotype), rows[p.id].genotype) for p in proposals):
                raise EvomergeError(f"the searcher does not replay this run's log (at evaluations {event.data['ids']}); "
                                    f"was the run made with other versions of evomerge, Optuna, pycma or pyribs? {_STUCK}",
                                    path=store.directory)
        elif event.evaluation in told:
            continue
        elif event.evaluation not in searcher.outstanding:
            raise EvomergeError(f"the run's log has a {event.kind} of evaluation {event.evaluation}, which the searcher "
                                f"never asked (did two processes write this run at once?); {_STUCK}",
                                path=store.directory)
        elif event.kind == "stage":
            if pruner is not None:
                pruner.replayed(event.evaluation, event.data["stage"], event.data["estimate"])
        else:
            tell(searcher, rows[event.evaluation], separate)
            told.add(event.evaluation)
    searcher.take_fetched()  # a replay fetches nothing new
    return searcher


_STUCK = ("it cannot be resumed: `evomerge report` and `evomerge export` still read it; start a new run to search "
          "further (its best.yaml is a recipe to start from)")
