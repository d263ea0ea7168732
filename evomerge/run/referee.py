"""The racing referee: after each stage of a raced candidate, whether it goes on.

The searcher's own pruner decides when it has one (Optuna); otherwise the candidate stops when
its upper bound (custom terms included) is not above the bar — the `rank`-th best fully scored
candidate so far — plus the margin. A stage is judged against the bar its bound was computed
against, which the worker was handed when the stage began (a bar that rose meanwhile, on
another worker, applies from the next stage on): a bound paired with one candidate's documents
is never compared with another's fitness.
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

from evomerge.run.pool import Step
from evomerge.run.store import Evaluation, RunStore
from evomerge.scoring.racing import Bar, stops
from evomerge.searchers import Searcher


class Referee:
    def __init__(self, store: RunStore, rank: int, finished: Sequence[Evaluation] = ()):
        self.store = store
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

    def judge(self, searcher: Searcher, evaluation_id: int, stage: Step) -> Tuple[bool, Optional[Bar]]:
        """(stop?, the bar to score the next stage against); the stage is logged first, as the searcher sees it."""
        self.store.add_stage(evaluation_id, stage.stage, stage.estimate)
        decision = searcher.prune(evaluation_id, stage.stage, stage.estimate)
        judged = stage.bar + stage.margin if stage.bar is not None else None
        return stops(decision, judged, stage.upper), self.bar()
