"""Racing: a candidate is scored in stages on growing shares of the search documents and
stops as soon as it cannot, with the stated confidence, beat the bar.

The documents of each task are put in one order, shuffled once per run from the run's
seed; stage k scores the next share of that order through lm-eval's own `samples=`, so
no document is scored twice and every stage reuses requests built once per run. After a
stage, the fitness Σ weight × sign × mean is estimated from the documents scored so far,
with the variance of a mean drawn without replacement from the task's N documents
(finite-population correction: it is exactly zero once all are scored). A candidate whose
upper confidence bound is not above the bar stops there, `raced`, with its estimate (a tie
cannot win: the earlier candidate ranks first).

When the bar's own per-document scores are known (every fully raced candidate keeps them),
the bound is paired: the candidate's fitness is estimated as the bar's plus the mean
difference between the two on the documents scored so far. Models from one search fail
and succeed on mostly the same documents, so the difference varies far less than either
score and a worse candidate is recognized from fewer documents (the blocked design of
F-Race). The documents are a random sample of each task's, so the estimate is unbiased.

Two things keep the bound honest on the first, small stages. Its variance counts two
pseudo-documents, half a document each, at the two ends of the score's range (Agresti and
Min's adjustment for paired proportions): a candidate that agrees with the bar on every
document scored so far is not yet known to agree on the rest. And no bound exceeds what the
candidate reaches if it scores the best possible value on every document not yet scored.

With `margin`, a candidate stops when it cannot beat the bar by more than that many
standard errors of the bar's own fitness: a difference the full evaluation cannot resolve
either (the indifference zone of ranking and selection). Its estimate still reaches the
searcher, so a search on a plateau keeps moving on estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from evomerge.recipe.schema import RacingSpec
from evomerge.scoring import continuous
from evomerge.scoring.fitness import Metrics, Objective
from evomerge.scoring.scorer import Documents, LMEvalScorer, averages
from evomerge.scoring.tasks import TaskSuite


@dataclass(frozen=True)
class Bar:
    """The fully scored candidate a raced one must beat: its fitness, its custom terms and its
    per-document scores of the fitness's terms in the run's document order (task -> key -> values)."""

    fitness: float
    custom: float = 0.0
    scores: Documents = field(default_factory=dict)


@dataclass(frozen=True)
class RaceResult:
    metrics: Metrics  # task -> result key -> mean over the documents scored (with `_stderr`)
    estimate: float  # of the fitness, custom terms included
    upper: float  # its upper confidence bound, from the candidate's scores alone
    documents: int  # scored, all tasks together
    complete: bool  # every stage ran: the metrics are the full evaluation's
    scores: Documents  # the fitness terms' per-document values so far, in run order
    custom: Dict[str, float] = field(default_factory=dict)  # the candidate's custom fitness terms, in the estimate


class Race:
    def __init__(self, spec: RacingSpec, scorer: LMEvalScorer, objective: Objective, seed: int):
        self.scorer = scorer
        self.objective = objective
        looks = max(len(spec.stages) - 1, 1)  # a candidate can be stopped after every stage but the last
        self.z = NormalDist().inv_cdf(1 - (1 - spec.confidence) / looks)
        self.margin = spec.margin
        suite = scorer.suite
        rng = np.random.default_rng(seed)
        pools = {task: np.asarray(scorer.pool(task)) for task in suite.names}
        self.totals = {task: len(pool) for task, pool in pools.items()}
        orders = {task: pool[rng.permutation(len(pool))] for task, pool in pools.items()}
        self.stages: List[Dict[str, List[int]]] = []
        done = {task: 0 for task in suite.names}
        for share in spec.stages:
            stage = {}
            for task, order in orders.items():
                end = max(done[task] + 1, math.ceil(share * len(order))) if share < 1 else len(order)
                stage[task] = [int(i) for i in order[done[task]:end]]
                done[task] = end
            self.stages.append(stage)

    def stages_scored(self, custom: Optional[Dict[str, float]] = None) -> Iterator[RaceResult]:
        """The estimate after each stage (with the candidate's `custom` fitness terms), the last one
        complete; the run's pruner decides after each whether to go on."""
        values: Documents = {}
        for number, stage in enumerate(self.stages, start=1):
            for task, found in self.scorer.score_documents(stage).items():
                for key, scores in found.items():
                    values.setdefault(task, {}).setdefault(key, []).extend(scores)
            yield self._estimate(values, dict(custom or {}), complete=number == len(self.stages))

    def _estimate(self, values: Documents, custom: Dict[str, float], complete: bool) -> RaceResult:
        metrics: Metrics = {task: averages(found) for task, found in values.items()}
        scores: Documents = {}
        for task, key, _, _ in self.objective.terms:
            scores.setdefault(task, {})[key] = list(values[task][key])
        _, estimate = self.objective.fitness(metrics, custom)
        documents = sum(len(next(iter(found.values()))) for found in values.values())
        return RaceResult(metrics, estimate, self._bound(scores, None) + sum(custom.values()), documents, complete,
                          scores, custom)

    def upper(self, result: RaceResult, bar: Optional[Bar]) -> float:
        """The upper confidence bound of the candidate's fitness (its custom terms are exact): of the
        lm-eval terms paired with the bar's scores on the same documents when the bar has them, else
        from the candidate's own; never above what it reaches by scoring best on every document left."""
        return self._bound(result.scores, bar) + sum(result.custom.values())

    def _paired(self, bar: Optional[Bar]) -> bool:
        """Whether the bar has a score for every document of this run, for every term."""
        return bar is not None and all(len(bar.scores.get(task, {}).get(key, [])) == self.totals[task]
                                       for task, key, _, _ in self.objective.terms)

    def _bound(self, scores: Documents, bar: Optional[Bar]) -> float:
        paired = self._paired(bar)
        estimate = bar.fitness - bar.custom if paired else 0.0
        variance, reachable = 0.0, 0.0
        for task, key, weight, sign in self.objective.terms:
            mine = np.asarray(scores[task][key], dtype=float)
            n, total = len(mine), self.totals[task]
            low, high = _score_range(key, mine, bar.scores[task][key] if paired else ())
            best = high if sign > 0 else low
            reachable += weight * sign * (mine.sum() + (total - n) * best) / total
            if paired:
                values = mine - np.asarray(bar.scores[task][key][:n], dtype=float)
                low, high = low - high, high - low  # the range of a difference
            else:
                values = mine
            estimate += weight * sign * values.mean()
            variance += weight ** 2 * _variance_of_mean(values, low, high, total)
        return float(min(estimate + self.z * math.sqrt(variance), reachable))

    def margin_of(self, bar: Optional[Bar]) -> float:
        """How much a candidate must be able to beat the bar by to go on: `margin` standard errors of
        the bar's fitness, from its own per-document scores (0 without them)."""
        if not self.margin or not self._paired(bar):
            return 0.0
        variance = 0.0
        for task, key, weight, _ in self.objective.terms:
            theirs = np.asarray(bar.scores[task][key], dtype=float)
            variance += weight ** 2 * (theirs.var(ddof=1) / len(theirs) if len(theirs) > 1 else 0.0)
        return self.margin * math.sqrt(variance)


ROUNDING = 1e-9  # fitness sums computed two ways agree to this


def _score_range(key: str, *scores: Sequence[float]) -> Tuple[float, float]:
    """The range a document's score can take: [0, 1] (accuracies, exact matches, p_gold), up to 0 for
    a per-token loglikelihood, unless scores outside it were seen."""
    seen = [value for values in scores for value in values]
    return min([0.0, *seen]), max([continuous.CEILINGS.get(key.split(",")[0], 1.0), *seen])


def _variance_of_mean(values: np.ndarray, low: float, high: float, total: int) -> float:
    """The variance of the mean of `values`, drawn without replacement from `total` documents (zero
    once all are scored): the unbiased sample variance, with two pseudo-documents of half a
    document each at `low` and `high` in its sum of squares, over n, times the finite-population
    correction. One document alone gets the widest variance its range allows."""
    n = len(values)
    if n >= total:
        return 0.0
    if n < 2:
        return (high - low) ** 2 / 4 * (1 - n / total)
    mean = values.mean()
    spread = float(((values - mean) ** 2).sum() + ((low - mean) ** 2 + (high - mean) ** 2) / 2)
    return spread / (n - 1) / n * (1 - n / total)


def stops(bar: Optional[float], upper: float) -> bool:
    """Whether a candidate cannot beat the bar: its bound is not above it (None: no bar, it goes on). A tie
    cannot win (the earlier candidate ranks first), and a bound meets the bar exactly only where what the
    candidate can still reach is all it can get."""
    return bar is not None and upper <= bar + ROUNDING


def check_averaged(objective: Objective, suite: TaskSuite) -> Optional[str]:
    """Racing estimates means from subsets: a metric aggregated otherwise (perplexity) cannot race."""
    for task, key, _, _ in objective.terms:
        metric = key.split(",")[0]
        if not suite.averaged(task, metric):
            return f"racing needs metrics that are means over documents; {task}'s {metric} is not"
    return None
