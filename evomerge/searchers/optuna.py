"""Optuna's samplers through its ask/tell interface: TPE, CMA-ES, NSGA-II (several
objectives: the run keeps the Pareto front) and random.

Optuna asks one trial whenever a worker is free and takes each result as it arrives, as
its own distributed optimization does; TPE uses its constant liar, so trials still running
count as bad ones and parallel workers do not all sample the same region.
"""

from __future__ import annotations

import logging
import warnings
from typing import Dict, List, Literal, Optional, Set

import optuna
from pydantic import Field, PositiveInt

from evomerge import log_levels
from evomerge.searchers.base import Fitness, Proposal, Searcher, SearcherOptions
from evomerge.searchers.registry import register


class OptunaOptions(SearcherOptions):
    sampler: Literal["tpe", "cmaes", "nsga2", "random"] = Field("tpe", description="Optuna's sampler; "
                                                                                   "`nsga2` for several objectives.")
    batch: PositiveInt = Field(8, description="A generation: NSGA-II's population, Optuna CMA-ES's popsize.")
    startup_trials: Optional[PositiveInt] = Field(None, description="TPE's random start-up trials "
                                                                    "(Optuna's default 10).")
    pruner: Optional[Literal["median", "successive_halving", "hyperband"]] = Field(
        None, description="Optuna's pruner, fed each racing stage's estimate (needs eval.racing).")


@register("optuna")
class OptunaSearch(Searcher):
    Options = OptunaOptions
    multi_objective = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options: OptunaOptions = self.options
        if self.objectives > 1 and options.sampler not in ("nsga2", "random", "tpe"):
            raise ValueError(f"Optuna's {options.sampler} sampler optimizes one objective")
        with log_levels.at_least("optuna", logging.WARNING):
            self.study = optuna.create_study(directions=["maximize"] * self.objectives, sampler=self._sampler(),
                                             pruner=self._pruner())
            self.study.enqueue_trial(self._params(self.x0))  # the recipe's own values come first
        self._trials: Dict[int, optuna.trial.Trial] = {}  # proposal id -> its trial, until told
        self._pruned: Set[int] = set()
        self.told = 0

    def _sampler(self) -> optuna.samplers.BaseSampler:
        options: OptunaOptions = self.options
        if options.sampler == "tpe":
            extra = {"n_startup_trials": options.startup_trials} if options.startup_trials else {}
            with warnings.catch_warnings():  # constant_liar is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True, **extra)
        if options.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=self.seed, x0=self._params(self.x0), popsize=options.batch)
        if options.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=options.batch)
        return optuna.samplers.RandomSampler(seed=self.seed)

    def _pruner(self) -> optuna.pruners.BasePruner:
        pruner = self.options.pruner
        if pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.options.batch)
        if pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        if pruner == "hyperband":
            return optuna.pruners.HyperbandPruner()
        return optuna.pruners.NopPruner()

    def report(self, proposal_id: int, stage: int, estimate: float) -> bool:
        """A racing stage's estimate, as an intermediate value of the proposal's trial: whether Optuna's
        pruner stops it there (it is then told as pruned, valued at its last estimate)."""
        trial = self._trials[proposal_id]
        trial.report(estimate, stage)
        if trial.should_prune():
            self._pruned.add(proposal_id)
            return True
        return False

    def _binary(self, index: int) -> bool:
        """A gene that counts only by which half of its range it is in (a route's inclusion gene), sampled as
        a choice of the two halves' middles, except by CMA-ES, which samples every gene as a number."""
        return (self.options.sampler != "cmaes" and index < len(self.genes)
                and bool(self.genes[index].get("binary")))

    def _params(self, genotype) -> dict:
        return {f"g{index}": (0.75 if value > 0.5 else 0.25) if self._binary(index) else float(value)
                for index, value in enumerate(genotype)}

    def _suggest(self, trial: optuna.trial.Trial, index: int) -> float:
        if self._binary(index):
            return trial.suggest_categorical(f"g{index}", (0.25, 0.75))
        return trial.suggest_float(f"g{index}", 0.0, 1.0)

    @property
    def generation_size(self) -> int:
        return self.options.batch

    def ask(self) -> List[Proposal]:
        with log_levels.at_least("optuna", logging.WARNING):
            trial = self.study.ask()
        proposal = self._proposal([self._suggest(trial, i) for i in range(self.dimension)],
                                  operator=f"optuna:{self.options.sampler}", trial=trial.number)
        self._trials[proposal.id] = trial
        return [proposal]

    def _told(self, proposal: Proposal, fitness: Fitness, scores) -> None:
        trial = self._trials.pop(proposal.id)
        with log_levels.at_least("optuna", logging.WARNING):
            if fitness is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif proposal.id in self._pruned:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # its last stage's value counts
            else:
                self.study.tell(trial, list(fitness) if self.objectives > 1 else fitness[0])
        self._pruned.discard(proposal.id)
        self.told += 1
        self.generation = self.told // self.options.batch


class RandomOptions(OptunaOptions):
    sampler: Literal["random"] = Field("random", description="Optuna's RandomSampler, the only one.")


@register("random")
class RandomSearch(OptunaSearch):
    """Random search, the honest baseline: Optuna's RandomSampler, uniform in the unit cube
    (after the recipe's own point), under its own name."""

    Options = RandomOptions
