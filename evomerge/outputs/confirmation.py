"""Confirm before crowning: the search's best is the best of many tries on the search documents, so
part of its lead there is luck (the winner's curse). The `top` best fully scored candidates are
scored on confirmation tasks the search never optimized, in process with the search's own worker,
and the best there wins. Each score is stored; a resumed run confirms only new finalists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

from tqdm.auto import tqdm

from evomerge.recipe.schema import TaskSpec
from evomerge.run.store import Confirmation
from evomerge.run.store.confirmations import TOP
from evomerge.scoring.fitness import Objective
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite

if TYPE_CHECKING:
    from evomerge.run.loop import Search


def confirmation_objective(suite: TaskSuite) -> Objective:
    """The mean of the tasks' main metrics (as the report's mean column), signed to be maximized."""
    share = 1.0 / len(suite.names)
    return Objective([TaskSpec(name=task, metric=suite.main_metric(task), weight=share) for task in suite.names],
                     suite)


def confirm_finalists(search: "Search") -> None:
    """Score the recipe's `confirm.top` best fully scored candidates on its confirmation tasks."""
    spec = search.recipe.spec
    if spec.confirm is None:
        return
    store = search.store
    store.set_meta(TOP, spec.confirm.top)  # the standings' finalists are the confirmed among the top, as here
    confirmed = store.confirmations.all()
    finalists = [e for e in store.evaluations.ranked()[:spec.confirm.top] if e.id not in confirmed]
    if not finalists:
        return
    worker = search.worker
    objective = confirmation_objective(search.confirmation)
    scorer = LMEvalScorer(search.confirmation, worker.materializer.model, worker.materializer.tokenizer,
                          options=spec.eval)
    for evaluation in tqdm(finalists, desc="confirm", disable=search.options.quiet):
        worker.materializer.materialize(search.space.decode(evaluation.genotype))
        metrics = scorer.score()
        try:
            _, fitness = objective.fitness(metrics, {})
        except ValueError:  # a non-finite score: the finalist cannot win
            fitness = float("-inf")
        store.confirmations.add(Confirmation(evaluation.id, fitness, metrics))


def rankings(search: "Search") -> Optional[Dict[str, Any]]:
    """The confirmed finalists in both orders, for the report: by search fitness and by confirmation."""
    confirmed = search.store.confirmations.all()
    if not confirmed:
        return None
    top = {e.id for e in search.store.evaluations.ranked()[:search.recipe.spec.confirm.top]}
    confirmed = {id_: c for id_, c in confirmed.items() if id_ in top}  # the finalists, as the standings have them
    standings = search.store.confirmations.standings()
    entry = {e.id: {"id": e.id, "fitness": e.fitness, "confirmation": confirmed[e.id].fitness}
             for e in standings if e.id in confirmed}
    return {"tasks": list(search.confirmation.names) if search.confirmation else [],
            "search_order": [entry[e.id] for e in search.store.evaluations.ranked() if e.id in entry],
            "confirmation_order": [entry[e.id] for e in standings if e.id in entry]}
