"""What a search's documents can tell apart, said before anything is scored: the smallest paired
difference between two candidates that the search documents, and the documents that confirm the
finalists, resolve at two standard errors (the binomial bound: no score seen yet). A search whose
candidates differ by less is choosing among ties, and the crown keeps the start."""

from __future__ import annotations

from typing import Optional

from evomerge.recipe.loading import Recipe
from evomerge.run.worker import held_back_split, scoring
from evomerge.scoring.paired import resolution
from evomerge.scoring.tasks import TaskSuite


def resolution_line(recipe: Recipe, confirmation: Optional[TaskSuite]) -> Optional[str]:
    """One line for `evomerge plan` and the start of a search; None for a fitness with no lm-eval tasks."""
    suite, objective = scoring(recipe)
    if suite is None:
        return None
    split = held_back_split(recipe, suite)
    search = {task: len(split.search[task]) if split else suite.documents(task, recipe.spec.eval.limit)
              for task in suite.names}
    line = (f"resolution at two standard errors (binomial bound): the {sum(search.values())} search documents tell "
            f"apart differences of {resolution(objective.terms, search):.4f}")
    if split is not None:
        held = {task: len(ids) for task, ids in split.held_back.items()}
        line += (f"; the {sum(held.values())} held-back documents ({split.share:.0%} of the search tasks') that "
                 f"confirm the finalists, {resolution(objective.terms, held):.4f}")
    elif confirmation is not None:
        share = 1.0 / len(confirmation.names)
        terms = [(task, confirmation.result_key(task, confirmation.main_metric(task)), share, 1.0)
                 for task in confirmation.names]
        counts = {task: confirmation.documents(task) for task in confirmation.names}
        line += (f"; the {sum(counts.values())} confirmation documents that confirm the finalists, "
                 f"{resolution(terms, counts):.4f}")
    return line + "; smaller differences are ties, and a finalist replaces the start only beyond them"
