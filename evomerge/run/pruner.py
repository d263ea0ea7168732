"""After each racing stage of a candidate, whether it goes on: one `Pruner`, chosen from the recipe.

The loop asks only the pruner: `judge` after each stage (logged first, so a resumed run replays
what the pruner saw), `finished` with each result, `bar` for what the next stage's bound is
computed against. Two pruners:

- `RacingBound` (`eval.racing`): the candidate stops when its upper bound (custom terms included)
  is not above the bar, the `rank`-th best fully scored candidate so far, plus the margin. A
  stage is judged against the bar its bound was computed against, which the worker was handed
  when the stage began (a bar that rose meanwhile, on another worker, applies from the next stage
  on): a bound paired with one candidate's documents is never compared with another's fitness.
- `OptunaPruner` (`searcher: {name: optuna, pruner: ...}`): Optuna's pruner decides instead,
  seeing each stage's estimate as an intermediate value of the candidate's trial.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

from evomerge.recipe import Recipe
from evomerge.run.pool import Step
from evomerge.run.store import Evaluation, RunStore
from evomerge.scoring.racing import Bar, stops
from evomerge.searchers import Searcher
from evomerge.searchers.optuna import OptunaSearch


class Pruner(ABC):
    def __init__(self, store: RunStore):
        self.store = store

    def judge(self, evaluation_id: int, stage: Step) -> bool:
        """Whether the candidate stops after `stage`; the stage is logged first."""
        self.store.add_stage(evaluation_id, stage.stage, stage.estimate)
        return self._stops(evaluation_id, stage)

    @abstractmethod
    def _stops(self, evaluation_id: int, stage: Step) -> bool:
        """The decision itself."""

    def bar(self) -> Optional[Bar]:
        """What a worker computes the next stage's bound against (None: nothing)."""
        return None

    def finished(self, evaluation: Evaluation) -> None:
        """A candidate's result."""

    def replayed(self, evaluation_id: int, stage: int, estimate: float) -> None:
        """A logged stage, on resume: a pruner that learns from the stages it sees learns it again."""


class RacingBound(Pruner):
    def __init__(self, store: RunStore, rank: int, finished: Sequence[Evaluation] = ()):
        super().__init__(store)
        self.rank = rank
        self._ok: List[Tuple[float, int]] = sorted((-e.fitness, e.id) for e in finished if e.ok)  # best first
        self._bars: Dict[int, Bar] = {}

    def finished(self, evaluation: Evaluation) -> None:
        if evaluation.ok:
            bisect.insort(self._ok, (-evaluation.fitness, evaluation.id))

    def bar(self) -> Optional[Bar]:
        """The rank-th best fully scored candidate so far, with its per-document scores (None: no bar yet)."""
        if len(self._ok) < self.rank:
            return None
        _, bar_id = self._ok[self.rank - 1]
        if bar_id not in self._bars:
            bar = self.store.evaluations.get(bar_id)
            self._bars[bar_id] = Bar(bar.fitness, sum(bar.metrics.get("custom", {}).values()),
                                     self.store.evaluations.document_scores(bar_id))
        return self._bars[bar_id]

    def _stops(self, evaluation_id: int, stage: Step) -> bool:
        return stops(stage.bar + stage.margin if stage.bar is not None else None, stage.upper)


class OptunaPruner(Pruner):
    def __init__(self, store: RunStore, searcher: OptunaSearch):
        super().__init__(store)
        self.searcher = searcher

    def _stops(self, evaluation_id: int, stage: Step) -> bool:
        return self.searcher.report(evaluation_id, stage.stage, stage.estimate)

    def replayed(self, evaluation_id: int, stage: int, estimate: float) -> None:
        self.searcher.report(evaluation_id, stage, estimate)


def make_pruner(recipe: Recipe, store: RunStore, searcher: Searcher,
                finished: Sequence[Evaluation] = ()) -> Optional[Pruner]:
    """The recipe's pruner (None without racing); `finished`: the run's results so far."""
    racing = recipe.spec.eval.racing
    if racing is None:
        return None
    if isinstance(searcher, OptunaSearch) and searcher.options.pruner:
        return OptunaPruner(store, searcher)
    return RacingBound(store, racing.rank, finished)
