"""mergekit-evolve's search space: its genotype, decoded by its own `genotype_merge_config`.

The genome is not translated into evomerge genes because genes cannot say all it says:
slerp picks, per layer group, the two models with the highest genotype values, the first as
the slice's base, with t = softmax of the two; weights are folded by abs() and densities by
abs().clamp(0, 1); and its discrete layer groups are output slices, whose final norm and
lm_head take the last group's values (a gradient would give them the first's). Calling
mergekit's own code makes every genotype merge to exactly what mergekit-evolve merges, and
the genes keep mergekit-evolve's layout, so a genotype from either tool means the same here.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from mergekit.evo.genome import METHOD_PARAM_MAPS, ModelGenome

from evomerge.errors import SECTION, EvomergeError
from evomerge.recipe.candidate import Candidate, Gene
from evomerge.recipe.evolve_config import genome_of, start_genotype
from evomerge.recipe.loading import Recipe
from evomerge.recipe.schema import GenomeSpec
from evomerge.recipe.space import SearchSpace

KEY = f"{SECTION}.genome"


class GenomeSpace(SearchSpace):
    """Genes in mergekit-evolve's order: layer group, model, filter set (the filters, then the
    rest), parameter; the vector is its flattened genotype."""

    def __init__(self, recipe: Recipe, genome: ModelGenome, genes: List[Gene], x0: np.ndarray):
        super().__init__(recipe, genes, x0)
        self.genome = genome

    @classmethod
    def from_genome(cls, recipe: Recipe) -> "GenomeSpace":
        spec = recipe.spec.genome
        genome = genome_of(spec, recipe.path, KEY)
        x0 = start_genotype(genome, spec, recipe.spec.seed)
        space = cls(recipe, genome, _genes(genome, spec), x0)
        start = space.starting_point().merge
        if not spec.random_init and _dump(start) != _dump(recipe.merge):
            raise EvomergeError("the mergekit keys must be the genome's starting point, as `evomerge convert` "
                                "writes them (the search decodes from evomerge.genome: edit that)",
                                path=recipe.path, key="merge_method")
        return space

    def decode(self, x: Sequence[float]) -> Candidate:
        x = np.clip(np.asarray(x, dtype=float), self.lower, self.upper)
        if x.shape != (self.dimension,):
            raise ValueError(f"expected a vector of {self.dimension} genes, got shape {x.shape}")
        return Candidate(merge=self.genome.genotype_merge_config(x), seed=self.recipe.spec.seed)

    def describe(self) -> List[Dict[str, Any]]:
        slerp = self.genome.definition.merge_method == "slerp"
        return [{"name": g.name, "low": g.low, "high": g.high, "controls": (
            f"mergekit-evolve genotype: {'slerp score' if slerp else g.parameter} of model {g.model}"
            + (f", tensors matching '{g.filter}'" if g.filter else "")
            + (f", layers {g.layer_ranges[g.group][0]}-{g.layer_ranges[g.group][1] - 1}" if g.layer_ranges
               else f", gradient point {g.group + 1} of {g.groups}" if g.groups > 1 else "")
            + ("; the two highest scores of a layer group are slerped, t = softmax" if slerp else ""))}
            for g in self.genes]


def _genes(genome: ModelGenome, spec: GenomeSpec) -> List[Gene]:
    layers = genome.num_layers
    groups = layers // spec.layer_granularity if spec.layer_granularity > 0 else 1
    step = layers // groups
    ranges = None if spec.smooth else tuple((g * step, (g + 1) * step) for g in range(groups))
    parameters = METHOD_PARAM_MAPS[spec.merge_method]
    genes = []
    for group, model, filter_name, parameter in itertools.product(
            range(groups), spec.models, list(spec.filters or []) + [None], parameters):
        low, high = spec.range_of(parameter)
        name = f"{Path(model.model.path).name}_{parameter}" + (f"_{filter_name}" if filter_name else "")
        genes.append(Gene(name + (f"@{group}" if groups > 1 else ""), parameter, low, high, group, groups,
                          str(model), filter_name, layer_ranges=ranges))
    return genes


def _dump(merge) -> Dict[str, Any]:
    return merge.model_dump(mode="json", exclude_defaults=True)
