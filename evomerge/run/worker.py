"""What one device holds for a search, and how it evaluates one candidate.

A worker keeps the parents resident, one output model that candidates are merged into in
place, and the lm-eval tasks built once. It evaluates one candidate at a time: `begin`
merges it and scores it (or its first racing stage), `advance` scores the next stage and
`stop` ends a raced candidate with its estimate. The search loop calls these directly in
its own process, or through one Ray actor per device (ray_pool.py); between stages only
the loop decides whether a candidate goes on, because only it knows the bar and the searcher.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from evomerge.errors import SECTION, EvomergeError, mergekit_refusals
from evomerge.merge.fingerprint import fingerprint
from evomerge.merge.materializer import default_device
from evomerge.merge.routed_model import search_materializer
from evomerge.recipe.custom_fitness import load_custom_fitness
from evomerge.recipe.device_defaults import scoring_dtype
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.pool import Outcome, Step
from evomerge.run_options import RunOptions
from evomerge.scoring import continuous
from evomerge.scoring.fitness import Metrics, Objective
from evomerge.scoring.racing import Bar, Race, RaceResult, check_averaged
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import Split, TaskSuite


def scoring(recipe: Recipe) -> Tuple[Optional[TaskSuite], Objective]:
    """The lm-eval tasks and the fitness, checked against each other; needs no model."""
    spec = recipe.spec
    custom = load_custom_fitness(spec.fitness, recipe.directory, recipe.path) if spec.fitness else None
    suite = TaskSuite([t.name for t in spec.tasks], recipe.task_paths(), source=recipe.path,
                      options=spec.eval, seed=spec.seed) if spec.tasks else None
    objective = Objective(spec.tasks, suite, custom, source=recipe.path)
    if spec.eval.racing and suite and (problem := check_averaged(objective, suite)):
        raise EvomergeError(problem, path=recipe.path, key=f"{SECTION}.eval.racing")
    return suite, objective


def held_back_split(recipe: Recipe, suite: Optional[TaskSuite]) -> Optional[Split]:
    """The search tasks' documents held back to confirm the finalists, when the recipe names no
    confirmation tasks; every worker draws the same (seeded by the recipe's seed)."""
    confirm = recipe.spec.confirm
    if suite is None or confirm.tasks:
        return None
    return suite.split(confirm.hold_back, recipe.spec.seed, recipe.spec.eval.limit)


def _freed(failed: Outcome) -> Outcome:
    """Called after the `except` block: only once the error and its traceback, whose frames hold the
    failed candidate's tensors, are gone can `empty_cache` return their memory to the device."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return failed


class Worker:
    def __init__(self, recipe: Recipe, options: RunOptions = RunOptions(), *, threads: Optional[int] = None):
        if threads:
            torch.set_num_threads(threads)
        spec = recipe.spec
        self.space = build_space(recipe)
        self.start = self.space.starting_point()
        self.suite, self.objective = scoring(recipe)
        device = torch.device(options.device or default_device())
        with mergekit_refusals(recipe.path):
            self.materializer = search_materializer(self.space, options=options, parents=spec.parents,
                                                 dtype=scoring_dtype(recipe.merge, spec.eval, device.type))
        self.split = held_back_split(recipe, self.suite)
        self.scorer = LMEvalScorer(self.suite, self.materializer.model, self.materializer.tokenizer,
                                   options=spec.eval, limit=spec.eval.limit,
                                   samples=self.split.search if self.split else None,
                                   continuous=continuous.wanted(t.metric for t in spec.tasks)) if self.suite else None
        self.race = Race(spec.eval.racing, self.scorer, self.objective, spec.seed) if spec.eval.racing else None
        self._stages: Optional[Iterator[RaceResult]] = None
        self._stage = 0
        self._result: Optional[RaceResult] = None

    def ready(self) -> int:
        """The worker's process id, once everything is loaded."""
        return os.getpid()

    def begin(self, genotype: List[float], bar: Optional[Bar] = None) -> Step:
        """Merge the candidate (decoded here, so that only plain numbers travel) and score it or its first stage."""
        self._started = time.perf_counter()
        self._materialize_seconds: Optional[float] = None
        self._fingerprint: Dict[str, str] = {}
        self._stage = 0
        try:
            self.materializer.materialize(self.space.decode(np.asarray(genotype)))
            self._fingerprint = fingerprint(self.materializer.model)
            self._scored = time.perf_counter()
            self._materialize_seconds = self._scored - self._started
            self._custom = self.objective.custom_scores(self.materializer.model, self.materializer.tokenizer)
            if self.race is None:
                metrics = self.scorer.score() if self.scorer else {}
                return Step(outcome=self._outcome("ok", metrics, self.scorer.documents if self.scorer else 0))
            self._stages = self.race.stages_scored(self._custom)
        except Exception as error:  # a failed candidate is data, not the end of the run
            failed = self._failed(error)
        else:
            return self.advance(bar)
        return Step(outcome=_freed(failed))

    def advance(self, bar: Optional[Bar] = None) -> Step:
        """The next racing stage; its bound compared with the bar's own scores when it has them."""
        failed = None
        try:
            self._result = next(self._stages)
        except Exception as error:
            failed = self._failed(error)
        if failed:
            return Step(self._stage, outcome=_freed(failed))
        self._stage += 1
        result = self._result
        if result.complete:
            return Step(self._stage, outcome=self._outcome("ok", result.metrics, result.documents, result.scores))
        return Step(self._stage, estimate=result.estimate, upper=self.race.upper(result, bar),
                    margin=self.race.margin_of(bar), bar=bar.fitness if bar else None)

    def stop(self) -> Step:
        """End a raced candidate with its estimate from the documents scored so far."""
        self._stages = None
        result = self._result
        return Step(self._stage, outcome=self._outcome("raced", result.metrics, result.documents, result.scores))

    def _outcome(self, status: str, metrics: Metrics, documents: int, scores=None) -> Outcome:
        try:
            objectives, fitness = self.objective.fitness(metrics, self._custom)
        except ValueError as error:  # a non-finite score
            return self._failed(error)
        return Outcome(status, {**metrics, **({"custom": self._custom} if self._custom else {})}, objectives,
                       fitness, None, self._materialize_seconds, time.perf_counter() - self._scored,
                       documents, scores or {}, self._fingerprint, str(self.materializer.device))

    def _failed(self, error: Exception) -> Outcome:
        seconds = self._materialize_seconds
        return Outcome("failed", error=f"{type(error).__name__}: {error}",
                       materialize_seconds=seconds if seconds is not None else time.perf_counter() - self._started)
