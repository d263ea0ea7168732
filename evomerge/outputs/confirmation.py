"""Confirm before crowning: the search's best is the best of many tries on the search documents, so
part of its lead there is luck (the winner's curse). The `top` best fully scored candidates are
scored on confirmation tasks the search never optimized, in process with the search's own worker,
and the best there wins. Each score is stored; a resumed run confirms only new finalists."""

from __future__ import annotations

from typing import Any, Dict, Optional

from tqdm.auto import tqdm

from evomerge.merge.materializer import Materializer
from evomerge.recipe.loading import Recipe
from evomerge.recipe.schema import TaskSpec
from evomerge.recipe.space import SearchSpace
from evomerge.run.store import Confirmation, RunStore
from evomerge.run.store.confirmations import TOP
from evomerge.scoring.fitness import Objective
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite


def confirmation_objective(suite: TaskSuite) -> Objective:
    """The mean of the tasks' main metrics (as the report's mean column), signed to be maximized."""
    share = 1.0 / len(suite.names)
    return Objective([TaskSpec(name=task, metric=suite.main_metric(task), weight=share) for task in suite.names],
                     suite)


def confirm_finalists(store: RunStore, recipe: Recipe, space: SearchSpace, materializer: Materializer,
                      suite: TaskSuite, quiet: bool = False) -> None:
    """Score the recipe's `confirm.top` best fully scored candidates on its confirmation tasks (`suite`)."""
    spec = recipe.spec
    store.set_meta(TOP, spec.confirm.top)  # the standings' finalists are the confirmed among the top, as here
    confirmed = store.confirmations.all()
    finalists = [e for e in store.evaluations.ranked()[:spec.confirm.top] if e.id not in confirmed]
    if not finalists:
        return
    objective = confirmation_objective(suite)
    scorer = LMEvalScorer(suite, materializer.model, materializer.tokenizer, options=spec.eval)
    for evaluation in tqdm(finalists, desc="confirm", disable=quiet):
        materializer.materialize(space.decode(evaluation.genotype))
        metrics = scorer.score()
        try:
            _, fitness = objective.fitness(metrics, {})
        except ValueError:  # a non-finite score: the finalist cannot win
            fitness = float("-inf")
        store.confirmations.add(Confirmation(evaluation.id, fitness, metrics))


def rankings(store: RunStore, suite: Optional[TaskSuite]) -> Optional[Dict[str, Any]]:
    """The confirmed finalists in both orders, for the report: by search fitness and by confirmation."""
    confirmed = store.confirmations.all()
    if not confirmed:
        return None
    top = {e.id for e in store.evaluations.ranked()[:store.meta(TOP)]}
    confirmed = {id_: c for id_, c in confirmed.items() if id_ in top}  # the finalists, as the standings have them
    standings = store.confirmations.standings()
    entry = {e.id: {"id": e.id, "fitness": e.fitness, "confirmation": confirmed[e.id].fitness}
             for e in standings if e.id in confirmed}
    return {"tasks": list(suite.names) if suite else [],
            "search_order": [entry[e.id] for e in store.evaluations.ranked() if e.id in entry],
            "confirmation_order": [entry[e.id] for e in standings if e.id in entry]}
