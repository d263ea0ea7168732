"""The ask/tell protocol every searcher follows, in the unit cube [0, 1]^d.

Searchers maximize. They number their proposals in the order they make them; the search
loop evaluates proposals in that order, so a proposal's id is its evaluation's id and
lineage can name parents by id. A failed candidate is told as `None`: each searcher
treats it as the worst outcome in its own way. State is a pickle of the whole object
(pycma's recommendation for its own strategy objects), restored with `from_state`.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
from pydantic import BaseModel, ConfigDict

Fitness = Optional[Tuple[float, ...]]  # one value per objective; None for a failed candidate
GeneInfo = Dict[str, Any]  # {"name", "low", "high", "controls"}: a gene as a person (or a language model) reads it


@dataclass(frozen=True)
class Proposal:
    id: int
    genotype: np.ndarray  # in the unit cube
    parents: Tuple[int, ...] = ()
    operator: str = ""
    info: dict = field(default_factory=dict)  # stored with the evaluation: a CMA restart, an Optuna trial, a rationale


class SearcherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Searcher(ABC):
    name: ClassVar[str]
    Options: ClassVar[Type[SearcherOptions]] = SearcherOptions
    multi_objective: ClassVar[bool] = False
    # Asking again after a restore gives the same proposals (seeded generators). Otherwise (a
    # language model answers) the loop also checkpoints right after `ask`, so a resumed run
    # evaluates what was asked. pycma's strategy must not be pickled between ask and tell.
    replayable: ClassVar[bool] = True

    def __init__(self, dimension: int, x0: np.ndarray, seed: int, options: SearcherOptions, objectives: int = 1,
                 genes: Sequence[GeneInfo] = ()):
        self.dimension = dimension
        self.genes = [dict(g) for g in genes]  # name, low, high, what it controls: for searchers that explain
        self.x0 = np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)
        self.seed = seed
        self.options = options
        self.objectives = objectives
        self._next_id = 0
        self.asked: List[Proposal] = []  # the generation asked and not told yet, kept in the checkpoint

    def _proposal(self, genotype: np.ndarray, parents: Sequence[int] = (), operator: str = "", **info) -> Proposal:
        proposal = Proposal(self._next_id, np.clip(np.asarray(genotype, dtype=float), 0.0, 1.0),
                            tuple(parents), operator, info)
        self._next_id += 1
        return proposal

    @property
    @abstractmethod
    def generation_size(self) -> int:
        """How many proposals one `ask()` makes."""

    @abstractmethod
    def ask(self) -> List[Proposal]:
        """The next generation of proposals."""

    @abstractmethod
    def tell(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        """Results for every proposal of the last `ask()`, in the same order."""

    def note(self, proposal_id: int, scores: Dict[str, float]) -> None:
        """A result's per-task scores, before `tell`; searchers that show their history keep them."""

    def prune(self, proposal_id: int, stage: int, estimate: float) -> Optional[bool]:
        """A raced candidate's estimate after a stage: True stops it, False lets it go on, None (the
        default) leaves the decision to racing's own bar."""
        return None

    def state(self) -> bytes:
        return pickle.dumps(self)

    @staticmethod
    def from_state(blob: bytes) -> "Searcher":
        searcher = pickle.loads(blob)
        if not isinstance(searcher, Searcher):
            raise TypeError(f"expected a searcher checkpoint, got {type(searcher).__name__}")
        searcher.__dict__.setdefault("asked", [])  # a checkpoint from before it was kept
        return searcher


def scalar(fitness: Fitness) -> Optional[float]:
    """The single objective of a single-objective searcher."""
    return None if fitness is None else float(fitness[0])
