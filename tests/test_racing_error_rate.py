"""Racing's stated confidence holds per candidate across all its stages: simulated races (no
models) count how often a candidate truly better than the bar is stopped."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import pytest

from evomerge.recipe.schema import RacingSpec, TaskSpec
from evomerge.scoring.fitness import Objective
from evomerge.scoring.racing import Bar, Race, stops

TASKS = ("one", "two")


class _Suite:
    """Two tasks of `documents` documents, scored by accuracy: what Race and Objective ask of lm-eval's."""

    def __init__(self, documents: int):
        self.names, self.size = list(TASKS), documents

    def documents(self, task: str, limit=None) -> int:
        return self.size

    def higher_is_better(self, task: str) -> Dict[str, bool]:
        return {"acc": True}

    def result_key(self, task: str, metric: str) -> str:
        return metric


class _Scorer:
    """Answers each stage from a candidate's known per-document results."""

    limit = None

    def __init__(self, suite: _Suite):
        self.suite, self.truth = suite, {}

    def pool(self, task: str) -> List[int]:
        return list(range(self.suite.size))

    def score_documents(self, stage: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, list]]:
        return {task: {"acc": [float(self.truth[task][i]) for i in ids]} for task, ids in stage.items() if len(ids)}


def stopped_when_better(races: int, *, documents: int = 150, disagree: int = 30, stages=(0.125, 0.25, 0.5, 1.0),
                        confidence: float = 0.95, seed: int = 0) -> float:
    """The share of races that stop a candidate whose full fitness beats the bar's by one document.

    The candidate disagrees with the bar on `disagree` documents of each task, both ways, and wins
    one more: the hardest case, a true difference as small as it can be amid noisy differences."""
    rng = np.random.default_rng(seed)
    suite = _Suite(documents)
    scorer = _Scorer(suite)
    objective = Objective([TaskSpec(name=task, weight=0.5) for task in TASKS], suite)
    wrong = 0
    for index in range(races):
        bar_scores, mine = {}, {}
        for task in TASKS:
            theirs = (rng.random(documents) < rng.uniform(0.3, 0.8)).astype(float)
            ours = theirs.copy()
            ones, zeros = np.flatnonzero(theirs == 1), np.flatnonzero(theirs == 0)
            flips = min(disagree, len(ones), len(zeros) - 1)
            ours[rng.choice(ones, flips, replace=False)] = 0.0
            ours[rng.choice(zeros, flips, replace=False)] = 1.0
            bar_scores[task], mine[task] = theirs, ours
        mine[TASKS[0]][rng.choice(np.flatnonzero(mine[TASKS[0]] == 0))] = 1.0
        race = Race(RacingSpec(stages=list(stages), confidence=confidence), scorer, objective, seed=index)
        order = {task: [i for stage in race.stages for i in stage[task]] for task in TASKS}
        bar = Bar(sum(0.5 * bar_scores[task].mean() for task in TASKS),
                  scores={task: {"acc": [float(bar_scores[task][i]) for i in order[task]]} for task in TASKS})
        scorer.truth = mine
        assert sum(0.5 * mine[task].mean() for task in TASKS) > bar.fitness
        wrong += any(stops(bar.fitness, race.upper(result, bar))
                     for result in race.stages_scored() if not result.complete)
    return wrong / races


@pytest.mark.parametrize("case", [
    {"disagree": 30},
    {"disagree": 10},
    {"disagree": 30, "confidence": 0.9},
    {"disagree": 12, "documents": 40, "stages": (0.25, 0.5, 0.75, 1.0)},
    {"disagree": 30, "stages": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)},
])
def test_a_better_candidate_is_stopped_at_most_one_minus_confidence_of_the_time(case):
    rate = stopped_when_better(1500, **case)
    assert rate <= 1 - case.get("confidence", 0.95), rate
