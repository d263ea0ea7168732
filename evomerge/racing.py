"""Racing: a candidate is scored in stages on growing shares of the search documents and
stops as soon as it cannot, with the stated confidence, reach the bar.

The documents of each task are put in one order, shuffled once per run from the run's
seed; stage k scores the next share of that order through lm-eval's own `samples=`, so
no document is scored twice and every stage reuses requests built once per run. After a
stage, the fitness Σ weight × sign × mean is estimated from the documents scored so far,
with the variance of a mean drawn without replacement from the task's N documents
(finite-population correction: it is exactly zero once all are scored). A candidate whose
upper confidence bound is below the bar stops there, `raced`, with its estimate.

When the bar's own per-document scores are known (every fully raced candidate keeps them),
the bound is paired: the candidate's fitness is estimated as the bar's plus the mean
difference between the two on the documents scored so far. Models from one search fail
and succeed on mostly the same documents, so the difference varies far less than either
score and a worse candidate is recognized from fewer documents (the blocked design of
F-Race). The documents are a random sample of each task's, so the estimate is unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from evomerge.evaluate import LMEvalScorer, Metrics, Objective, TaskSuite
from evomerge.pool import Bar
from evomerge.recipe import RacingSpec


@dataclass(frozen=True)
class RaceResult:
    metrics: Metrics  # task -> result key -> mean over the documents scored (with `_stderr`)
    estimate: float  # of the fitness's lm-eval terms
    upper: float  # its upper confidence bound, from the candidate's scores alone
    documents: int  # scored, all tasks together
    complete: bool  # every stage ran: the metrics are the full evaluation's
    scores: Dict[str, Dict[str, List[float]]]  # the fitness terms' per-document values so far, in run order


class Race:
    def __init__(self, spec: RacingSpec, scorer: LMEvalScorer, objective: Objective, seed: int):
        self.scorer = scorer
        self.objective = objective
        self.z = NormalDist().inv_cdf(spec.confidence)
        suite = scorer.suite
        rng = np.random.default_rng(seed)
        self.totals = {task: suite.documents(task, scorer.limit) for task in suite.names}
        orders = {task: rng.permutation(total) for task, total in self.totals.items()}
        self.stages: List[Dict[str, List[int]]] = []
        done = {task: 0 for task in suite.names}
        for share in spec.stages:
            stage = {}
            for task, order in orders.items():
                end = max(done[task] + 1, math.ceil(share * len(order))) if share < 1 else len(order)
                stage[task] = [int(i) for i in order[done[task]:end]]
                done[task] = end
            self.stages.append(stage)

    def stages_scored(self) -> Iterator[RaceResult]:
        """The estimate after each stage, the last one complete; the caller stops when it decides to."""
        values: Dict[str, Dict[str, List[float]]] = {}
        for number, stage in enumerate(self.stages, start=1):
            for task, found in self.scorer.score_documents(stage).items():
                for key, scores in found.items():
                    values.setdefault(task, {}).setdefault(key, []).extend(scores)
            yield self._estimate(values, complete=number == len(self.stages))

    def run(self, bar: Optional[float], prune: Optional[Callable[[int, float], Optional[bool]]] = None) -> RaceResult:
        """Stages until the last or until the candidate cannot reach `bar` (None: never stops).

        `prune(stage, estimate)`, when given and not None, decides instead of the bar: how
        Optuna's pruners see each stage as an intermediate value.
        """
        for number, result in enumerate(self.stages_scored(), start=1):
            if result.complete or stops(prune(number, result.estimate) if prune else None, bar, result.upper):
                return result
        raise AssertionError("the last stage is complete")

    def _estimate(self, values: Dict[str, Dict[str, List[float]]], complete: bool) -> RaceResult:
        metrics: Metrics = {}
        for task, found in values.items():
            for key, scores in found.items():
                array = np.asarray(scores, dtype=float)
                metrics.setdefault(task, {})[key] = float(array.mean())
                if len(array) > 1:
                    metrics[task][_stderr_key(key)] = float(array.std(ddof=1) / math.sqrt(len(array)))
        estimate, variance = 0.0, 0.0
        for task, key, weight, sign in self.objective.terms:
            scores = np.asarray(values[task][key], dtype=float)
            n, total = len(scores), self.totals[task]
            estimate += weight * sign * scores.mean()
            if n > 1:
                variance += weight ** 2 * scores.var(ddof=1) / n * (1 - n / total)
        documents = sum(len(next(iter(found.values()))) for found in values.values())
        scores: Dict[str, Dict[str, List[float]]] = {}
        for task, key, _, _ in self.objective.terms:
            scores.setdefault(task, {})[key] = list(values[task][key])
        return RaceResult(metrics, float(estimate), float(estimate + self.z * math.sqrt(variance)), documents, complete,
                          scores)

    def upper(self, result: RaceResult, bar: Optional[Bar]) -> float:
        """The upper bound of the candidate's lm-eval terms: paired with the bar's scores on the same
        documents when the bar has them, else the candidate's own."""
        if bar is None or not bar.scores:
            return result.upper
        estimate, variance = bar.fitness - bar.custom, 0.0
        for task, key, weight, sign in self.objective.terms:
            mine = np.asarray(result.scores[task][key], dtype=float)
            theirs = bar.scores.get(task, {}).get(key, [])
            n, total = len(mine), self.totals[task]
            if len(theirs) != total:
                return result.upper  # not scored on this run's documents
            difference = mine - np.asarray(theirs[:n], dtype=float)
            estimate += weight * sign * difference.mean()
            if n > 1:
                variance += weight ** 2 * difference.var(ddof=1) / n * (1 - n / total)
        return float(estimate + self.z * math.sqrt(variance))


def stops(decision: Optional[bool], bar: Optional[float], upper: float) -> bool:
    """A searcher's own decision (a pruner) when it has one; else whether the bound is below the bar."""
    return decision if decision is not None else (bar is not None and upper < bar)


def _stderr_key(key: str) -> str:
    metric, _, filter_name = key.partition(",")
    return f"{metric}_stderr" + (f",{filter_name}" if filter_name else "")


def check_averaged(objective: Objective, suite: TaskSuite) -> Optional[str]:
    """Racing estimates means from subsets: a metric aggregated otherwise (perplexity) cannot race."""
    for task, key, _, _ in objective.terms:
        metric = key.split(",")[0]
        if not suite.averaged(task, metric):
            return f"racing needs metrics that are means over documents; {task}'s {metric} is not"
    return None
