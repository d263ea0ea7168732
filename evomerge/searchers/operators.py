"""Genetic operators as small classes that receive their random generator.

Selection works on fitness arrays where a failed candidate is -inf: it is never chosen
while anything else is available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class TournamentSelection:
    size: int

    def select(self, fitness: np.ndarray, rng: np.random.Generator) -> int:
        entrants = rng.choice(len(fitness), size=min(self.size, len(fitness)), replace=False)
        return int(entrants[np.argmax(fitness[entrants])])


@dataclass(frozen=True)
class RouletteSelection:
    """Fitness-proportional (GENOME's roulette wheel), shifted so the worst living one has a small share."""

    def select(self, fitness: np.ndarray, rng: np.random.Generator) -> int:
        alive = np.isfinite(fitness)
        if not alive.any():
            return int(rng.integers(len(fitness)))
        shifted = np.where(alive, fitness - fitness[alive].min(), 0.0)
        weights = np.where(alive, shifted + 1e-3 * (shifted.max() + 1e-12), 0.0)
        return int(rng.choice(len(fitness), p=weights / weights.sum()))


@dataclass(frozen=True)
class UniformCrossover:
    n_parents = 2

    def crossover(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(parents.shape[1]) < 0.5, parents[0], parents[1])


@dataclass(frozen=True)
class SplitPointCrossover:
    """M2N2's split point, over an ordered sequence of units (a route's slots, each with all its genes):
    the child takes the units before a random point from the first parent and the rest from the
    second, so a contiguous run of layers stays as one parent routed it."""

    units: Tuple[Tuple[int, ...], ...]
    n_parents = 2

    def crossover(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        point = int(rng.integers(1, len(self.units))) if len(self.units) > 1 else 0
        child = parents[1].copy()
        before = [i for unit in self.units[:point] for i in unit]
        child[before] = parents[0][before]
        return child


def units(genes: Sequence[Dict[str, Any]], dimension: int) -> Tuple[Tuple[int, ...], ...]:
    """Genes grouped by the slot they describe (in order of first appearance); a gene without one is its own unit."""
    found: Dict[Any, List[int]] = {}
    for index in range(dimension):
        slot = genes[index].get("slot") if index < len(genes) else None
        found.setdefault(("slot", slot) if slot is not None else ("gene", index), []).append(index)
    return tuple(tuple(unit) for unit in found.values())


@dataclass(frozen=True)
class BlendCrossover:
    """BLX-α: each gene uniform in the parents' interval widened by α on both sides."""

    alpha: float
    n_parents = 2

    def crossover(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = parents.min(axis=0), parents.max(axis=0)
        spread = high - low
        return rng.uniform(low - self.alpha * spread, high + self.alpha * spread)


@dataclass(frozen=True)
class GaussianMutation:
    rate: float
    scale: float

    def mutate(self, genotype: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each gene moves with probability `rate`, and at least one does: a child equal to its parent (or to
        the blend of a parent with itself, when selection picks it twice) would only re-measure it."""
        mask = rng.random(genotype.shape) < self.rate
        mask[rng.integers(len(genotype))] = True
        return genotype + mask * rng.normal(0.0, self.scale, genotype.shape)


@dataclass(frozen=True)
class DifferentialMutation:
    """Evolver's step: x' = x + F·(x_r1 − x_r2), then binomial crossover with the target at rate CR."""

    f: float
    cr: float
    n_parents = 3  # the target, r1, r2

    def crossover(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        target, r1, r2 = parents
        mutant = target + self.f * (r1 - r2)
        take = rng.random(target.shape) < self.cr
        take[rng.integers(len(target))] = True  # at least one gene from the mutant
        return np.where(take, mutant, target)


@dataclass(frozen=True)
class Succession:
    """GENOME+'s succession: a particle-swarm step that moves an offspring toward its own best
    (its better parent) and the population's best and away from the population's worst, with
    a step size that decays by `decay` every generation."""

    step: float
    decay: float

    def move(self, x: np.ndarray, own_best: np.ndarray, best: np.ndarray, worst: np.ndarray, generation: int,
             rng: np.random.Generator) -> np.ndarray:
        size = self.step * self.decay ** generation
        r1, r2, r3 = rng.random((3, len(x)))
        return x + size * (r1 * (own_best - x) + r2 * (best - x) - r3 * (worst - x))
