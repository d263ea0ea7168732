"""Quality-diversity search with pyribs: a map of merges, the best one for each balance of the tasks.

An archive (ribs' `GridArchive` or `CVTArchive`) keeps, for every cell of a grid of per-task scores
(the measures: search tasks or custom fitness terms), the best merge that landed there (its elite,
by fitness); ribs' emitters (`EvolutionStrategyEmitter`: CMA-ME; `GaussianEmitter`; `IsoLineEmitter`)
propose from it and ribs' `Scheduler` asks and tells them a generation at a time. Generation 0 is the
recipe's own point alone, added to the archive as it is, so the map always holds the start.

A failed candidate is told below everything at the measures of an elite that beats it (the archive's
worst, or the best of its own generation while the archive is empty): ribs needs a finite value, the
emitters rank it last, and the archive never stores it. A generation that fails whole before the
archive holds anything starts the emitters afresh, with the next seed.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from ribs.archives import CVTArchive, GridArchive
from ribs.emitters import EvolutionStrategyEmitter, GaussianEmitter, IsoLineEmitter
from ribs.schedulers import Scheduler

from evomerge.errors import EvomergeError
from evomerge.searchers.base import Archive, Elite, Fitness, GenerationalSearcher, Proposal, SearcherOptions, scalar
from evomerge.searchers.registry import register

CVT_SAMPLES = 20_000  # points k-means places the CVT centroids from (ribs' default 100,000 is slow and no better in 2-3 D)


class QDOptions(SearcherOptions):
    measures: Optional[List[str]] = Field(
        None, min_length=1, max_length=3,
        description="The axes of the map: search task names (their metric's score) or `custom` / `custom.NAME` "
                    "(custom fitness terms); default: the first two search tasks.")
    ranges: Optional[List[Tuple[float, float]]] = Field(
        None, description="Each measure's [low, high] on the map; default: [0, 1] (a task metric's range).")
    archive: Literal["grid", "cvt"] = Field("grid", description="ribs' GridArchive or CVTArchive (centroids by "
                                                                "k-means, for three measures or uneven maps).")
    resolution: PositiveInt = Field(10, ge=2, description="Cells per measure of a grid archive.")
    cells: PositiveInt = Field(50, ge=2, description="Cells of a CVT archive.")
    emitter: Literal["es", "gaussian", "iso_line"] = Field(
        "es", description="ribs' emitter: `es` (EvolutionStrategyEmitter, CMA-ME: CMA-ES ranked by improvement of "
                          "the archive), `gaussian` (an elite plus Gaussian noise) or `iso_line` (Iso+LineDD).")
    emitters: PositiveInt = Field(1, description="How many emitters propose each generation.")
    batch: PositiveInt = Field(8, description="Proposals per emitter and generation.")
    sigma: PositiveFloat = Field(0.15, description="The step in the unit cube of the genes: CMA-ES's sigma0, the "
                                                   "Gaussian's std, Iso+LineDD's iso sigma.")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "QDOptions":
        if self.ranges is not None and any(low >= high for low, high in self.ranges):
            raise ValueError("each range is [low, high] with low < high")
        return self

    def reading(self, scores: Mapping[str, str]) -> "QDOptions":
        """The measures as score keys ('task.metric' as `tasks:` names it, or one already); by default the
        first two search tasks (`scores` lists `custom` last, when the recipe has a custom fitness)."""
        names = self.measures or [name for name in scores if name != "custom"][:2]
        keys = []
        for index, name in enumerate(names):
            if name in scores:
                keys.append(scores[name])
            elif name in scores.values():
                keys.append(name)
            elif name.startswith("custom.") and "custom" in scores:
                keys.append(f"custom.{name}")  # a term of a custom fitness that returns a dict: 'custom.custom.NAME'
            else:
                raise EvomergeError(f"measure {name!r} is neither a search task nor a custom fitness term; expected one "
                                    f"of {', '.join(scores)}" + (" (or custom.NAME)" if "custom" in scores else ""),
                                    key=f"measures[{index}]")
        if not keys:
            raise EvomergeError("a map needs measures: the recipe has no search tasks", key="measures")
        if self.ranges is not None and len(self.ranges) != len(keys):
            raise EvomergeError(f"{len(self.ranges)} ranges for {len(keys)} measures ({', '.join(names)})",
                                key="ranges")
        return self.model_copy(update={"measures": keys})


def measure(scores: Mapping[str, float], key: str) -> Optional[float]:
    """A measure's value among an evaluation's scores: the metric itself or, for a task with a filter,
    'metric,filter' (lm-eval's first filter); None if the evaluation lacks it (a failure)."""
    if key in scores:
        return scores[key]
    return next((value for name, value in scores.items() if name.startswith(key + ",")), None)


@register("qd")
class QualityDiversity(GenerationalSearcher):
    """Quality-diversity search (pyribs): the best merge for each balance of per-task scores, on a map."""

    Options = QDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options: QDOptions = self.options
        if not options.measures:
            raise ValueError("qd needs its measures resolved against the recipe's tasks (QDOptions.reading)")
        self.keys = tuple(options.measures)
        self.ranges = tuple(tuple(r) for r in options.ranges or [(0.0, 1.0)] * len(self.keys))
        seeds = np.random.SeedSequence(self.seed).generate_state(2)
        extra = {"evaluation": ((), np.int64)}
        if options.archive == "grid":
            self.archive = GridArchive(solution_dim=self.dimension, dims=[options.resolution] * len(self.keys),
                                       ranges=self.ranges, seed=int(seeds[0]), extra_fields=extra)
        else:
            self.archive = CVTArchive(solution_dim=self.dimension, centroids=options.cells, ranges=self.ranges,
                                      samples=CVT_SAMPLES, seed=int(seeds[0]), extra_fields=extra)
        self._emitter_seed = int(seeds[1])
        self.scheduler = self._scheduler()
        self._measures: Dict[int, Optional[Tuple[float, ...]]] = {}

    def _scheduler(self) -> Scheduler:
        options: QDOptions = self.options
        seeds = np.random.SeedSequence(self._emitter_seed).generate_state(options.emitters)
        bounds = [(0.0, 1.0)] * self.dimension
        common = {"x0": self.x0, "bounds": bounds, "batch_size": options.batch}
        if options.emitter == "es":
            emitters = [EvolutionStrategyEmitter(self.archive, sigma0=options.sigma, seed=int(s), **common)
                        for s in seeds]
        elif options.emitter == "gaussian":
            emitters = [GaussianEmitter(self.archive, sigma=options.sigma, seed=int(s), **common) for s in seeds]
        else:
            emitters = [IsoLineEmitter(self.archive, iso_sigma=options.sigma, seed=int(s), **common) for s in seeds]
        return Scheduler(self.archive, emitters)

    @property
    def generation_size(self) -> int:
        return 1 if self.generation == 0 else self.options.emitters * self.options.batch

    def _ask_generation(self) -> List[Proposal]:
        if self.generation == 0:
            return [self._proposal(self.x0, operator="start")]
        return [self._proposal(x, operator=f"qd:{self.options.emitter}") for x in self.scheduler.ask()]

    def _told(self, proposal: Proposal, fitness: Fitness, scores: Dict[str, float]) -> None:
        values = [measure(scores, key) for key in self.keys]
        self._measures[proposal.id] = None if fitness is None or None in values else tuple(values)
        super()._told(proposal, fitness, scores)

    def _tell_generation(self, proposals: Sequence[Proposal], fitnesses: Sequence[Fitness]) -> None:
        objective = [scalar(f) if self._measures[p.id] is not None else None for p, f in zip(proposals, fitnesses)]
        measures = [self._measures.pop(p.id) for p in proposals]
        ids = np.array([p.id for p in proposals])
        if self.generation == 0:
            if objective[0] is not None:
                self.archive.add(np.array([proposals[0].genotype]), np.array(objective), np.array(measures),
                                 evaluation=ids)
            return
        below = self._below(objective, measures)
        if below is None:  # nothing to place a failure below: the emitters start again
            self._emitter_seed += 1
            self.scheduler = self._scheduler()
            return
        self.scheduler.tell([below[0] if o is None else o for o in objective],
                            [below[1] if m is None else m for m in measures], evaluation=ids)

    def _below(self, objective: Sequence[Optional[float]], measures: Sequence[Optional[Tuple[float, ...]]]):
        """Where a failure is told: just under the archive's worst elite, in its cell (or under the
        generation's worst success, in the cell of its best), so it is ranked last and never stored."""
        ok = [(o, m) for o, m in zip(objective, measures) if o is not None]
        if not self.archive.empty:
            data = self.archive.data(["objective", "measures"])
            worst = int(np.argmin(data["objective"]))
            low = min([data["objective"][worst]] + [o for o, _ in ok])
            return low - 1.0, tuple(data["measures"][worst])
        if ok:
            return min(o for o, _ in ok) - 1.0, max(ok)[1]
        return None

    def elites(self) -> Archive:
        """The archive now, cell by cell, with the results of a generation still out added to a copy of it:
        the emitters learn them with the rest of their generation, the map shows every evaluation told
        (a run's budget may end inside a generation)."""
        archive = self.archive
        told = [p for p in self._asked if self._measures.get(p.id) is not None]
        if told:
            archive = copy.deepcopy(self.archive)
            archive.add(np.array([p.genotype for p in told]), np.array([scalar(self._results[p.id]) for p in told]),
                        np.array([self._measures[p.id] for p in told]), evaluation=np.array([p.id for p in told]))
        data = archive.data(["index", "objective", "measures", "evaluation"])
        order = np.argsort(data["index"])
        if isinstance(archive, GridArchive):
            cells = archive.int_to_grid_index(data["index"][order]) if len(order) else []
            shape = tuple(int(d) for d in archive.dims)
        else:
            cells = [[i] for i in data["index"][order]]
            shape = (int(archive.cells),)
        elites = tuple(Elite(int(data["index"][i]), tuple(int(c) for c in cell), int(data["evaluation"][i]),
                             float(data["objective"][i]), tuple(float(v) for v in data["measures"][i]))
                       for i, cell in zip(order, cells))
        return Archive(self.keys, self.ranges, shape, self.options.archive, elites)
