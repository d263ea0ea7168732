"""A genetic algorithm with lineage: selection, crossover, mutation and elitism, or
Evolver's differential step with greedy replacement.

Generation 0 is the recipe's starting point plus uniform samples. Then, by default,
each generation keeps the `elitism` best individuals and fills the population with
children of selected parents (crossover with probability `crossover_rate`, then Gaussian
mutation). With `differential`, every individual instead gets one child
x + F·(x_r1 − x_r2) (binomially crossed with it), and the child replaces its parent only
if it scores better (Evolver). With `succession`, each child then takes GENOME+'s
particle-swarm step (toward its better parent and the best, away from the worst; the step
decays every generation). Every proposal names its parents and the operator.

With `steady: true` the GA is steady-state, for workers that should never wait: it asks
one child at a time from the population as it stands, and each result is taken in as it
arrives (a child replaces the population's worst if it is better; with `differential`, its
own parent if it is better). The first `population` proposals are the starting point and
uniform samples, as in the generational GA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence

import numpy as np
from pydantic import Field, PositiveInt

from evomerge.searchers.base import (
    Fitness,
    GenerationalSearcher,
    Proposal,
    SearcherOptions,
    scalar,
)
from evomerge.searchers.operators import (
    BlendCrossover,
    DifferentialMutation,
    GaussianMutation,
    RouletteSelection,
    SplitPointCrossover,
    Succession,
    TournamentSelection,
    UniformCrossover,
    units,
)
from evomerge.searchers.registry import register


class DifferentialOptions(SearcherOptions):
    f: float = Field(0.5, gt=0, description="Evolver's F, the scale of the difference step (typically 0.1-0.5).")
    cr: float = Field(0.5, ge=0, le=1, description="The binomial crossover rate of the child with its parent.")


class SuccessionOptions(SearcherOptions):
    step: float = Field(0.5, gt=0, description="GENOME+'s step size.")
    decay: float = Field(0.95, gt=0, le=1, description="The step's factor per generation.")


class GAOptions(SearcherOptions):
    population: PositiveInt = Field(12, ge=4, description="Individuals per generation.")
    selection: Literal["tournament", "roulette"] = Field("tournament", description="How parents are selected.")
    tournament_size: PositiveInt = Field(3, description="Individuals per tournament, with `selection: tournament`.")
    elitism: int = Field(2, ge=0, description="The best individuals kept unchanged in each generation.")
    crossover: Literal["blend", "uniform", "split"] = Field(
        "blend", description="How two parents combine; `split`: one split point over a route's slots (M2N2).")
    crossover_rate: float = Field(0.9, ge=0, le=1, description="The chance that a child is a crossover of its parents.")
    blend_alpha: float = Field(0.5, ge=0, description="How far beyond its parents' interval, in shares of its "
                                                      "width, a blend child may fall.")
    mutation_rate: float = Field(0.2, ge=0, le=1, description="The chance that each gene of a child mutates "
                                                              "(at least one does).")
    mutation_scale: float = Field(0.1, gt=0, description="The std of the Gaussian mutation, in the unit cube.")
    differential: Optional[DifferentialOptions] = Field(None, description="Evolver's differential step with greedy "
                                                                          "replacement instead; default: off.")
    succession: Optional[SuccessionOptions] = Field(None, description="GENOME+'s particle-swarm step after each "
                                                                      "child; default: off.")
    steady: bool = Field(False, description="Steady-state: one child at a time, each result taken as it arrives.")


@dataclass
class Individual:
    id: int
    genotype: np.ndarray
    fitness: float = -np.inf  # -inf: failed, never selected while anything else lives


@register("ga")
class GeneticAlgorithm(GenerationalSearcher):
    Options = GAOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options: GAOptions = self.options
        if options.elitism >= options.population:
            raise ValueError("elitism must be smaller than the population")
        self.rng = np.random.default_rng(self.seed)
        self.selection = (TournamentSelection(options.tournament_size) if options.selection == "tournament"
                          else RouletteSelection())
        if options.crossover == "split":
            self.crossover = SplitPointCrossover(units(self.genes, self.dimension))
        else:
            self.crossover = BlendCrossover(options.blend_alpha) if options.crossover == "blend" else UniformCrossover()
        self.mutation = GaussianMutation(options.mutation_rate, options.mutation_scale)
        self.differential = (DifferentialMutation(options.differential.f, options.differential.cr)
                             if options.differential else None)
        self.succession = (Succession(options.succession.step, options.succession.decay)
                           if options.succession else None)
        self.population: List[Individual] = []
        self.initial = 0  # initial proposals made (steady state asks them one at a time)
        self.told = 0
        self._target = 0  # the steady differential step's next target

    @property
    def generation_size(self) -> int:
        if not self.population or self.differential or self.options.steady:
            return self.options.population
        return self.options.population - self.options.elitism

    def _initial(self) -> Proposal:
        self.initial += 1
        if self.initial == 1:
            return self._proposal(self.x0, operator="start")
        return self._proposal(self.rng.uniform(size=self.dimension), operator="init")

    def _ask_generation(self) -> List[Proposal]:
        if not self.population:
            return [self._initial() for _ in range(self.options.population)]
        if self.differential:
            return [self._differential_child(index) for index in range(len(self.population))]
        return [self._child() for _ in range(self.generation_size)]

    def ask(self) -> List[Proposal]:
        if not self.options.steady:
            return super().ask()
        if self.initial < self.options.population:
            return [self._initial()]
        if len(self.population) < (3 if self.differential else 2):
            return []  # too few results to breed from yet
        if self.differential:
            self._target = (self._target + 1) % len(self.population)
            return [self._differential_child(self._target)]
        return [self._child()]

    def _fitness(self) -> np.ndarray:
        return np.array([i.fitness for i in self.population])

    def _child(self) -> Proposal:
        fitness = self._fitness()
        parents = [self.population[self.selection.select(fitness, self.rng)] for _ in range(self.crossover.n_parents)]
        if self.rng.random() < self.options.crossover_rate:
            genotype = self.crossover.crossover(np.stack([p.genotype for p in parents]), self.rng)
            operator = f"{self.options.crossover}+mutation"
        else:
            parents, genotype, operator = parents[:1], parents[0].genotype.copy(), "mutation"
        genotype = self._mutated(genotype, parents)
        if self.succession:
            alive = [i for i in self.population if np.isfinite(i.fitness)] or self.population
            ranked = sorted(alive, key=lambda i: (-i.fitness, i.id))
            own = max(parents, key=lambda i: i.fitness)
            genotype = self.succession.move(genotype, own.genotype, ranked[0].genotype, ranked[-1].genotype,
                                            self.generation, self.rng)
            operator += "+succession"
        return self._proposal(genotype, parents=[p.id for p in parents], operator=operator)

    def _mutated(self, genotype: np.ndarray, parents: Sequence[Individual], tries: int = 16) -> np.ndarray:
        """Mutated until, within the bounds, it differs from every parent (a gene at a bound can be pushed
        back onto it): a copy would spend an evaluation re-measuring its parent."""
        for _ in range(tries):
            child = np.clip(self.mutation.mutate(genotype, self.rng), 0.0, 1.0)
            if not any(np.array_equal(child, parent.genotype) for parent in parents):
                break
        return child

    def _differential_child(self, index: int) -> Proposal:
        others = [i for i in range(len(self.population)) if i != index]
        r1, r2 = self.rng.choice(others, size=2, replace=False)
        trio = [self.population[index], self.population[r1], self.population[r2]]
        genotype = self.differential.crossover(np.stack([p.genotype for p in trio]), self.rng)
        return self._proposal(genotype, parents=[p.id for p in trio], operator="differential")

    def _told(self, proposal: Proposal, fitness: Fitness, scores) -> None:
        if not self.options.steady:
            return super()._told(proposal, fitness, scores)
        child = Individual(proposal.id, proposal.genotype, -np.inf if scalar(fitness) is None else scalar(fitness))
        self.told += 1
        self.generation = self.told // self.options.population
        if proposal.operator in ("start", "init"):
            self.population.append(child)
            return
        if self.differential:
            target = next((i for i, member in enumerate(self.population) if member.id == proposal.parents[0]), None)
        else:
            target = int(np.argmin(self._fitness()))
        if target is not None and child.fitness > self.population[target].fitness:
            self.population[target] = child

    def _tell_generation(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        children = [Individual(p.id, p.genotype, -np.inf if scalar(f) is None else scalar(f))
                    for p, f in zip(proposals, fitnesses)]
        if not self.population:
            self.population = children
        elif self.differential:
            for proposal, child in zip(proposals, children):
                target = next(i for i, member in enumerate(self.population) if member.id == proposal.parents[0])
                if child.fitness > self.population[target].fitness:
                    self.population[target] = child
        else:
            elites = sorted(self.population, key=lambda i: (-i.fitness, i.id))[: self.options.elitism]
            self.population = elites + children
