"""The ask/tell protocol every searcher follows, in the unit cube [0, 1]^d.

Searchers maximize. `ask()` returns what can be proposed now: a whole generation, one
proposal, or nothing while the searcher waits for results. `tell(id, fitness)` takes one
result at a time, in any order, paired with its proposal by id; a failed candidate is told
as `None`, which each searcher treats as the worst outcome in its own way. Proposals are
numbered in the order they are made, so lineage can name parents by id.

A searcher is never saved as an object (a pickle of code would run on `resume`): the run
store logs every ask and tell, and a fresh searcher with the same seed that replays the log
is in the same state. What a searcher takes from outside the process (a
language model's answers) goes through `external()`, whose values the log records and the
replay hands back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
from pydantic import BaseModel, ConfigDict

Fitness = Optional[Tuple[float, ...]]  # one value per objective; None for a failed candidate
GeneInfo = Dict[str, Any]  # {"name", "low", "high", "controls"}: a gene as a person (or a language model) reads it;
# a route's genes add "slot" (genes of one slot travel together) and "binary" (only the half of the range counts)


@dataclass(frozen=True)
class Proposal:
    id: int
    genotype: np.ndarray  # in the unit cube
    parents: Tuple[int, ...] = ()
    operator: str = ""
    info: dict = field(default_factory=dict)  # stored with the evaluation: a CMA restart, an Optuna trial, a rationale
    generation: int = 0


@dataclass(frozen=True)
class Elite:
    """The best evaluation in one cell of a quality-diversity archive."""

    index: int  # the archive's own cell index
    cell: Tuple[int, ...]  # per measure for a grid; (index,) for a CVT
    evaluation: int
    objective: float
    measures: Tuple[float, ...]


@dataclass(frozen=True)
class Archive:
    """A quality-diversity searcher's map, as the run stores it and the report draws it."""

    measures: Tuple[str, ...]  # score keys: 'task.metric', 'custom.custom' or 'custom.custom.NAME'
    ranges: Tuple[Tuple[float, float], ...]
    shape: Tuple[int, ...]  # cells per measure for a grid; (cells,) for a CVT
    kind: str  # grid | cvt
    elites: Tuple[Elite, ...]


class SearcherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def probe(self, source: Optional[Path] = None) -> None:
        """Before the run: refuse, with an EvomergeError naming `source` (the recipe), what would stop
        every ask (a service that refuses to answer). Searchers that ask no one have nothing to probe."""

    def reading(self, scores: Mapping[str, str]) -> "SearcherOptions":
        """The options for a recipe whose evaluations report `scores` (a name the recipe may use -> its key
        in `tell`'s scores): names resolved, defaults that depend on them filled in, a name that is not
        there refused with an EvomergeError keyed inside the options. Searchers that read no scores keep theirs."""
        return self


class Searcher(ABC):
    name: ClassVar[str]
    Options: ClassVar[Type[SearcherOptions]] = SearcherOptions
    multi_objective: ClassVar[bool] = False

    def __init__(self, dimension: int, x0: np.ndarray, seed: int, options: SearcherOptions, objectives: int = 1,
                 genes: Sequence[GeneInfo] = ()):
        self.dimension = dimension
        self.genes = [dict(g) for g in genes]  # name, low, high, what it controls: for searchers that explain
        self.x0 = np.clip(np.asarray(x0, dtype=float), 0.0, 1.0)
        self.seed = seed
        self.options = options
        self.objectives = objectives
        self.generation = 0
        self.outstanding: Dict[int, Proposal] = {}  # asked, not told yet
        self.recorded: List[Any] = []  # what `external()` fetched since the last take_fetched(), for the log
        self._replayed: List[Any] = []
        self._next_id = 0

    def _proposal(self, genotype: np.ndarray, parents: Sequence[int] = (), operator: str = "", **info) -> Proposal:
        proposal = Proposal(self._next_id, np.clip(np.asarray(genotype, dtype=float), 0.0, 1.0),
                            tuple(parents), operator, info, self.generation)
        self._next_id += 1
        self.outstanding[proposal.id] = proposal
        return proposal

    @property
    @abstractmethod
    def generation_size(self) -> int:
        """How many proposals make one generation (for a steady-state searcher: one round of the population)."""

    @abstractmethod
    def ask(self) -> List[Proposal]:
        """What can be proposed now; empty while the searcher waits for results."""

    def tell(self, proposal_id: int, fitness: Fitness, scores: Optional[Dict[str, float]] = None) -> None:
        """One result, by proposal id; `scores` are its per-task scores, for searchers that show their history."""
        proposal = self.outstanding.pop(proposal_id, None)
        if proposal is None:
            raise ValueError(f"proposal {proposal_id} was not asked or was told already")
        self._told(proposal, fitness, dict(scores or {}))

    @abstractmethod
    def _told(self, proposal: Proposal, fitness: Fitness, scores: Dict[str, float]) -> None:
        """Take one result in."""

    def elites(self) -> Optional[Archive]:
        """A quality-diversity searcher's map, for the run store; the others keep none."""
        return None

    def external(self, fetch: Callable[[], Any]) -> Any:
        """A value from outside (JSON data): fetched and recorded, or, in a replay, the recorded one."""
        if self._replayed:
            return self._replayed.pop(0)
        value = fetch()
        self.recorded.append(value)
        return value

    def take_fetched(self) -> List[Any]:
        """What `external()` fetched since the last take (for the log, with the ask that fetched it); cleared."""
        fetched, self.recorded = self.recorded, []
        return fetched

    def replay_inputs(self, values: Sequence[Any]) -> None:
        """What the next ask's `external()` calls return instead of fetching (a replay of the log)."""
        self._replayed = list(values)


class GenerationalSearcher(Searcher):
    """Asks a whole generation and waits for all of its results, in any order, before it
    learns from them in proposal order (CMA-ES, the generational GA). The result does not
    depend on the order results arrive in, so a run on workers equals the run in process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._asked: List[Proposal] = []
        self._results: Dict[int, Fitness] = {}

    def ask(self) -> List[Proposal]:
        if self.outstanding:
            return []
        self._asked = self._ask_generation()
        return list(self._asked)

    def _told(self, proposal: Proposal, fitness: Fitness, scores: Dict[str, float]) -> None:
        self._results[proposal.id] = fitness
        if not self.outstanding:
            self._tell_generation(self._asked, [self._results[p.id] for p in self._asked])
            self._results = {}
            self.generation += 1

    @abstractmethod
    def _ask_generation(self) -> List[Proposal]:
        """The next generation."""

    @abstractmethod
    def _tell_generation(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        """Every result of the generation, in proposal order."""


def scalar(fitness: Fitness) -> Optional[float]:
    """The single objective of a single-objective searcher."""
    return None if fitness is None else float(fitness[0])
