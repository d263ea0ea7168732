"""Random search: the honest baseline, uniform in the unit cube."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
from pydantic import PositiveInt

from evomerge.searchers.base import Fitness, Proposal, Searcher, SearcherOptions


class RandomOptions(SearcherOptions):
    batch: PositiveInt = 8


class RandomSearch(Searcher):
    name = "random"
    Options = RandomOptions
    multi_objective = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(self.seed)

    @property
    def generation_size(self) -> int:
        return self.options.batch

    def ask(self) -> List[Proposal]:
        return [self._proposal(self.rng.uniform(size=self.dimension), operator="uniform")
                for _ in range(self.generation_size)]

    def tell(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        """Random search learns nothing from results."""
