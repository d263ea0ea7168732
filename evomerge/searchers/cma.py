"""CMA-ES through pycma, with its own seeded generator and pycma's boundary handling.

When pycma's own stopping criteria fire, the search restarts as IPOP-CMA-ES does (pycma's
`restarts` with `incpopsize=2`): from the best point found, with twice the population.
Every proposal records the restart it belongs to. CMA-ES keeps its generations: with
workers, a worker that finishes early waits for the generation's last result.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import cma
import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt

from evomerge.searchers.base import (
    Fitness,
    GenerationalSearcher,
    Proposal,
    SearcherOptions,
    scalar,
)
from evomerge.searchers.registry import register


class CMAOptions(SearcherOptions):
    popsize: Optional[PositiveInt] = Field(None, description="Candidates per generation, doubled at each restart; "
                                                             "default: pycma's, 4 + floor(3 ln d) for d genes.")
    sigma0: PositiveFloat = Field(1 / 6, description="The initial step size, in the unit cube of the genes "
                                                     "(Sakana's evolutionary merge used 1/6).")


class _Normal:
    """pycma's `randn` option, drawing from our generator instead of numpy's global one."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


@register("cma")
class CMAES(GenerationalSearcher):
    Options = CMAOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.normal = _Normal(self.seed)
        self.restarts = 0
        self.es = self._strategy(self.x0)

    def _strategy(self, mean: np.ndarray) -> cma.CMAEvolutionStrategy:
        popsize = (self.options.popsize or 4 + int(3 * math.log(max(self.dimension, 1)))) * 2 ** self.restarts
        return cma.CMAEvolutionStrategy(list(mean), self.options.sigma0, {
            "bounds": [0.0, 1.0], "popsize": popsize, "randn": self.normal,
            "seed": np.nan, "verbose": -9, "verb_log": 0, "verb_disp": 0,
        })

    @property
    def generation_size(self) -> int:
        return self.es.popsize

    def _ask_generation(self) -> List[Proposal]:
        if self.es.stop():
            self.restarts += 1
            self.es = self._strategy(np.clip(self.es.result.xbest, 0.0, 1.0))
        first = self._next_id == 0
        if first:  # the start recipe is scored first, as by every searcher: the crown's baseline
            self.es.inject([self.x0], force=True)
        self._solutions = self.es.ask()
        return [self._proposal(x, operator="start" if first and index == 0 else "cma", restart=self.restarts)
                for index, x in enumerate(self._solutions)]

    def _tell_generation(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        values = [scalar(f) for f in fitnesses]
        ok = [v for v in values if v is not None]
        worst = -(min(ok) - 1.0) if ok else 1.0
        self.es.tell(self._solutions, [-v if v is not None else worst for v in values])
