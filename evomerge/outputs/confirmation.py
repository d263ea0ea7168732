"""Confirm before crowning (crowning.py says why and how): the finalists and the start are scored,
in process with the search's own worker, on documents that selected none of them: the recipe's
`confirm.tasks`, or the search tasks' documents held back from the search. Each score is stored
with its per-document values; a resumed run scores only new finalists and crowns again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from evomerge.merge.materializer import Materializer
from evomerge.outputs import crowning
from evomerge.recipe.loading import Recipe
from evomerge.recipe.schema import TaskSpec
from evomerge.recipe.space import SearchSpace
from evomerge.run.store import Confirmation, Evaluation, RunStore
from evomerge.scoring.fitness import Objective
from evomerge.scoring.paired import Terms
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import Split, TaskSuite


@dataclass(frozen=True)
class ConfirmationDocuments:
    """What the finalists are scored on, and how their scores add up to one number."""

    suite: TaskSuite
    samples: Optional[Dict[str, List[int]]]  # each task's held-back documents; None: the confirm tasks, whole
    objective: Objective
    description: str  # for the report: which documents, and why these

    @property
    def terms(self) -> Terms:
        return self.objective.terms

    def count(self) -> Dict[str, int]:
        """Each task's confirmation documents."""
        return {task: len(self.samples[task]) if self.samples else self.suite.documents(task)
                for task in self.suite.names}


def confirmation_documents(recipe: Recipe, confirm_suite: Optional[TaskSuite], search_suite: Optional[TaskSuite],
                           objective: Objective, split: Optional[Split]) -> Optional[ConfirmationDocuments]:
    """The recipe's confirmation tasks (each alike, by its main metric), else the search tasks' held-back
    documents (scored as the fitness scores them); None for a fitness with no lm-eval documents."""
    if confirm_suite is not None:
        share = 1.0 / len(confirm_suite.names)
        tasks = [TaskSpec(name=t, metric=confirm_suite.main_metric(t), weight=share) for t in confirm_suite.names]
        return ConfirmationDocuments(confirm_suite, None, Objective(tasks, confirm_suite),
                                     f"the confirmation tasks {', '.join(confirm_suite.names)}")
    if search_suite is None or split is None:
        return None
    held = sum(map(len, split.held_back.values()))
    return ConfirmationDocuments(search_suite, split.held_back, Objective(recipe.spec.tasks, search_suite),
                                 f"{held} documents of the search tasks held back from the search "
                                 f"({split.share:.0%}, seeded by the recipe's seed)")


def start_evaluation(evaluations: Sequence[Evaluation], space: SearchSpace) -> Optional[Evaluation]:
    """The start recipe's own evaluation (every built-in searcher proposes it first), if it finished."""
    start = np.asarray(space.x0, dtype=float)
    return next((e for e in evaluations
                 if e.status in ("ok", "raced") and np.allclose(e.genotype, start, rtol=1e-12, atol=1e-12)), None)


def confirm_finalists(store: RunStore, recipe: Recipe, space: SearchSpace, materializer: Materializer,
                      documents: Optional[ConfirmationDocuments], quiet: bool = False,
                      among: Optional[Sequence[Evaluation]] = None) -> Optional[Dict[str, Any]]:
    """Choose the finalists `among` the run's evaluations (default: every finished one; fewer: what a
    shorter budget would have crowned), score them and the start on `documents` (what is not stored
    yet), and store the crown; without confirmation documents the search's best is crowned as it stands."""
    spec = recipe.spec.confirm
    evaluations = list(among) if among is not None else store.evaluations.finished()
    if not any(e.ok for e in evaluations):
        return None
    start = start_evaluation(evaluations, space)
    estimated = crowning.estimates(evaluations, spec.rank, recipe.spec.seed)
    chosen = crowning.finalists(evaluations, estimated, spec.top, start.id if start else None)
    if documents is None or not chosen:
        crown = {"winner": (chosen or [start])[0].id, "start": start.id if start else None, "beat_start": None,
                 "finalists": [], "differences": {}, "unconfirmed": True}
        store.confirmations.set_crown(crown)
        return crown
    counts = documents.count()  # a confirmation scored on other documents (its tasks changed on resume) is stale
    confirmed = {i for i, c in store.confirmations.all().items()
                 if all(len(next(iter(c.documents.get(task, {}).values()), ())) == n for task, n in counts.items())}
    scorer = LMEvalScorer(documents.suite, materializer.model, materializer.tokenizer, options=recipe.spec.eval,
                          samples=documents.samples)
    for evaluation in tqdm([e for e in ([start] if start else []) + chosen if e.id not in confirmed],
                           desc="confirm", disable=quiet):
        materializer.materialize(space.decode(evaluation.genotype))
        metrics, values = scorer.score_with_documents()
        try:
            _, fitness = documents.objective.fitness(metrics, {})
        except ValueError:  # a non-finite score: the finalist cannot win
            fitness = float("-inf")
        store.confirmations.add(Confirmation(evaluation.id, fitness, metrics, values))
    crown = crowning.decide(start.id if start else None, [e.id for e in chosen], store.confirmations.all(),
                            documents.terms, spec.z)
    crown.update(rank=spec.rank, estimates={str(e.id): estimated[e.id] for e in chosen},
                 source=documents.description, documents=counts)
    store.confirmations.set_crown(crown)
    return crown


def rankings(store: RunStore) -> Optional[Dict[str, Any]]:
    """The crowning for the report: the finalists by search fitness and by confirmation, the start's
    confirmation score, each finalist's paired difference from the start and the verdict."""
    crown = store.confirmations.crown()
    if crown is None or crown.get("unconfirmed"):
        return crown
    confirmed = store.confirmations.all()
    entries = {}
    for i in crown["finalists"]:
        evaluation = store.evaluations.get(i)
        entries[i] = {"id": i, "fitness": evaluation.fitness, "confirmation": confirmed[i].fitness,
                      "estimate": crown["estimates"][str(i)], **({"difference": crown["differences"][str(i)]}
                                                                  if str(i) in crown["differences"] else {})}
    start = crown["start"]
    return {**crown,
            "start_confirmation": confirmed[start].fitness if start is not None else None,
            "search_order": sorted(entries.values(), key=lambda e: (-e["fitness"], e["id"])),
            "confirmation_order": sorted(entries.values(), key=lambda e: (-e["confirmation"], e["id"]))}
