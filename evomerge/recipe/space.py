"""The search space: genes tied to recipe parameters, and the map from a vector to a recipe.

Decoding writes each gene's number (genes.py builds them) into a copy of the recipe, so mergekit's
own resolution (gradients, filters, precedence) decides what every tensor gets, both in memory and
in `mergekit-yaml`. The other spaces (genome.py, routing.py) subclass this one; space_factory.py
picks the one a recipe asks for, so this base knows none of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mergekit.config import ConditionalParameter, MergeConfiguration

from evomerge.recipe import layout
from evomerge.recipe.candidate import NOISE, Candidate, Gene, fixed_noise
from evomerge.recipe.loading import Recipe


class SearchSpace:
    def __init__(self, recipe: Recipe, genes: List[Gene], x0: np.ndarray):
        self.recipe = recipe
        self.genes = genes
        self.x0 = x0

    @property
    def dimension(self) -> int:
        return len(self.genes)

    @property
    def lower(self) -> np.ndarray:
        return np.array([g.low for g in self.genes], dtype=float)

    @property
    def upper(self) -> np.ndarray:
        return np.array([g.high for g in self.genes], dtype=float)

    def to_unit(self, x: Sequence[float]) -> np.ndarray:
        """Searchers work in the unit cube, whatever each gene's range."""
        return (np.asarray(x, dtype=float) - self.lower) / (self.upper - self.lower)

    def from_unit(self, u: Sequence[float]) -> np.ndarray:
        return self.lower + np.clip(np.asarray(u, dtype=float), 0.0, 1.0) * (self.upper - self.lower)

    def decode(self, x: Sequence[float]) -> Candidate:
        """Pure and deterministic: the same vector always gives the same recipe."""
        x = np.clip(np.asarray(x, dtype=float), self.lower, self.upper)
        if x.shape != (self.dimension,):
            raise ValueError(f"expected a vector of {self.dimension} genes, got shape {x.shape}")
        stages = self.recipe.stages
        merges = {stage.name: stage.merge.model_copy(deep=True) for stage in stages}
        final = stages[-1].name
        noise = fixed_noise(self.recipe)
        ranges = {(g.parameter, g.model, g.slice_index, g.stage): g.layer_ranges for g in self.genes}
        for key, entries in _grouped(self.genes, x).items():
            parameter, model, slice_index, stage = key
            if parameter == NOISE:
                noise = tuple(value for _, value in sorted(entries[None]))
                continue
            setting = _setting(entries, ranges[key])
            for target in _parameter_dicts(merges[final if stage is None else stage], model, slice_index):
                target[parameter] = setting
        before = tuple(dataclasses.replace(stage, merge=merges[stage.name]) for stage in stages[:-1])
        return Candidate(merge=merges[final], seed=self.recipe.spec.seed, noise=noise, before=before, name=final,
                         reads=stages[-1].reads)

    def starting_point(self) -> Candidate:
        return self.decode(self.x0)

    def largest_merge(self) -> MergeConfiguration:
        """A recipe that holds as much as the largest candidate: the recipe's own, whose structure candidates keep."""
        return self.recipe.merge

    def largest_stages(self) -> List[layout.Stage]:
        """The stages of the largest candidate: the recipe's own, or a route's one stage over all it may take."""
        return self.recipe.stages if self.largest_merge() is self.recipe.merge else [layout.Stage(None, self.largest_merge())]

    def describe(self) -> List[Dict[str, Any]]:
        """Each gene as a person reads it: its name, range and what it controls in the recipe."""
        return [{"name": g.name, "low": g.low, "high": g.high, "controls": _controls(g)} for g in self.genes]


def _controls(gene: Gene) -> str:
    if gene.parameter == NOISE:
        what = "std of Gaussian weight noise, relative to each merged tensor's std"
    else:
        what = f"mergekit parameter `{gene.parameter}`" + (f" of model {gene.model}" if gene.model else " (shared)")
        what += f" in stage {gene.stage}" if gene.stage else ""
    if gene.slice_index is not None:
        what += f" in output slice {gene.slice_index}"
    if gene.filter is not None:
        what += f", tensors matching '{gene.filter}'"
    if gene.layer_ranges is not None:
        start, end = gene.layer_ranges[gene.group]
        what += f", layers {start}-{end - 1}"
    elif gene.groups > 1:
        what += f", gradient point {gene.group + 1} of {gene.groups} across the layers (first to last)"
    return what


def _grouped(genes: List[Gene], x: np.ndarray) -> Dict[tuple, Dict[Optional[str], List[Tuple[int, float]]]]:
    """(parameter, model, slice, stage) -> filter -> [(group, value)], filters in declaration order."""
    grouped: Dict[tuple, Dict[Optional[str], List[Tuple[int, float]]]] = {}
    for gene, value in zip(genes, x):
        value = float(round(value)) if gene.integer else float(value)
        key = (gene.parameter, gene.model, gene.slice_index, gene.stage)
        grouped.setdefault(key, {}).setdefault(gene.filter, []).append((gene.group, value))
    return grouped


def _setting(entries: Dict[Optional[str], List[Tuple[int, float]]],
             layer_ranges: Optional[Tuple[Tuple[int, int], ...]] = None) -> Any:
    """A scalar, an N-point gradient, or a filter list ending with the fallback.

    Explicit layer ranges become a gradient with one point per layer, each layer taking its
    group's value: mergekit puts layer i at exactly the i-th of L points.
    """

    def gradient(points: List[Tuple[int, float]]) -> Any:
        values = [value for _, value in sorted(points)]
        if layer_ranges is not None:
            values = [value for value, (start, end) in zip(values, layer_ranges) for _ in range(start, end)]
        return values[0] if len(values) == 1 else values

    if list(entries) == [None]:
        return gradient(entries[None])
    conditions = [ConditionalParameter(filter=f, value=gradient(p)) for f, p in entries.items() if f is not None]
    return conditions + [ConditionalParameter(value=gradient(entries[None]))]


def _parameter_dicts(merge: MergeConfiguration, model: Optional[str], slice_index: Optional[int]) -> Iterator[dict]:
    """The `parameters:` mappings a gene writes to, created when absent."""
    for holder in layout.parameter_holders(merge, slice_index, model):
        if holder.parameters is None:
            holder.parameters = {}
        yield holder.parameters
