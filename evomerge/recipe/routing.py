"""The routing search space: one inclusion gene per slot (and a scale gene per slot), decoded into a
route and its passthrough recipe (route.py).

The slots are each model's layers in order, model after model, all of it `repeats` times. A
candidate passes through the slots whose inclusion gene is positive, in slot order, each with its
slot's scale. Every vector decodes to a valid route: with no positive gene the largest one is
taken, with more than `max_layers` the `max_layers` largest are (in slot order). The starting
point is the recipe's own passthrough recipe, matched to the slots in order.

PS+DFS: in a multi-stage recipe the route is the final merge, and a routed model may be an earlier
stage's output (by its name). The earlier stages' parameter genes come first in the genotype, the
route's after them, and one vector decodes to both: the earlier stages the route reads, then the route.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mergekit.architecture import get_architecture_info
from mergekit.common import ModelReference
from mergekit.config import InputModelDefinition, InputSliceDefinition, MergeConfiguration, OutputSliceDefinition
from mergekit.options import MergeOptions

from evomerge.errors import SECTION, EvomergeError
from evomerge.recipe.candidate import Candidate, Gene
from evomerge.recipe.genes import output_layers, parameter_space
from evomerge.recipe.layout import Stage, references
from evomerge.recipe.loading import Recipe
from evomerge.recipe.references import resolve_model_path
from evomerge.recipe.route import Hop, RoutingEntry, RoutingSpec, from_merge, per_layer_lists, to_merge
from evomerge.recipe.space import SearchSpace
from evomerge.recipe.stages import stage_named

INCLUDE, SCALE = "include", "scale"


def routing_entry(recipe: Recipe) -> int:
    """The index of the recipe's routing block in `search:`, or -1."""
    return next((i for i, e in enumerate(recipe.spec.search) if isinstance(e, RoutingEntry)), -1)


class RoutingSpace(SearchSpace):
    def __init__(self, recipe: Recipe, spec: RoutingSpec, models: List[str], layers: Dict[str, int],
                 genes: List[Gene], x0: np.ndarray, earlier: Optional[SearchSpace] = None):
        super().__init__(recipe, genes, x0)
        self.spec = spec
        self.earlier = earlier  # the earlier stages' parameter genes (PS+DFS), first in the genotype
        self.offset = earlier.dimension if earlier is not None else 0
        self.reads = tuple(m for m in models if m in _stage_names(recipe))  # earlier stages the route may take
        self.models = models  # resolved references, in the block's order
        self.layers = layers
        self.ends = models[spec.models.index(spec.ends)]
        self.slots = _slots(models, layers, spec.repeats)
        self.max_layers = min(spec.max_layers or len(self.slots), len(self.slots))

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "RoutingSpace":
        index = routing_entry(recipe)
        key = f"{SECTION}.search[{index}].routing"
        staged = len(recipe.stages) > 1
        if (len(recipe.spec.search) > 1 and not staged) or recipe.spec.noise is not None:
            raise EvomergeError("a routing block is the whole search space here (no other genes, no noise); "
                                "combine it with parameter genes in a multi-stage recipe",
                                path=recipe.path, key=f"{SECTION}.search")
        spec: RoutingSpec = recipe.spec.search[index].routing
        names = _stage_names(recipe)
        models = [m if m in names else resolve_model_path(m, recipe.directory) for m in spec.models]
        layers = _layers(recipe, models, key)
        slots = _slots(models, layers, spec.repeats)
        if spec.max_layers is not None and spec.max_layers > len(slots):
            raise EvomergeError(f"max_layers {spec.max_layers} is more than the {len(slots)} slots",
                                path=recipe.path, key=f"{key}.max_layers")
        start = _start(recipe, spec, models, layers, slots, key)
        if len(start) > (spec.max_layers or len(slots)):
            raise EvomergeError(f"the recipe's own route has {len(start)} layers, more than max_layers "
                                f"{spec.max_layers}", path=recipe.path, key=f"{key}.max_layers")
        earlier = parameter_space(recipe) if staged else None
        genes, x0 = list(earlier.genes) if earlier else [], list(earlier.x0) if earlier else []
        names = {m: Path(m).name or m for m in models}
        for kind in (INCLUDE, SCALE) if spec.scale else (INCLUDE,):
            low, high = (-1.0, 1.0) if kind == INCLUDE else spec.scale
            for slot, (model, layer) in enumerate(slots):
                genes.append(Gene(f"{kind}[{names[model]}:{layer}]" + (f"#{slot // (len(slots) // spec.repeats)}"
                                                                        if spec.repeats > 1 else ""),
                                  kind, low, high, slot, len(slots), model, integer=False))
                chosen = start.get(slot)
                if kind == INCLUDE:
                    x0.append(0.5 if chosen is not None else -0.5)
                else:
                    value = 1.0 if chosen is None or chosen.scale is None else chosen.scale
                    x0.append(float(np.clip(value, low, high)))
        return cls(recipe, spec, models, layers, genes, np.array(x0, dtype=float), earlier)

    def route(self, x: Sequence[float]) -> List[Hop]:
        x = np.clip(np.asarray(x, dtype=float), self.lower, self.upper)
        if x.shape != (self.dimension,):
            raise ValueError(f"expected a vector of {self.dimension} genes, got shape {x.shape}")
        count = len(self.slots)
        x = x[self.offset:]
        include, scale = x[:count], x[count:] if self.spec.scale else None
        chosen = np.flatnonzero(include > 0)
        if len(chosen) == 0:
            chosen = np.array([int(np.argmax(include))])
        if len(chosen) > self.max_layers:
            largest = chosen[np.argsort(-include[chosen], kind="stable")[: self.max_layers]]
            chosen = np.sort(largest)
        return [Hop(*self.slots[s], float(scale[s]) if scale is not None else None) for s in chosen]

    def decode(self, x: Sequence[float]) -> Candidate:
        hops = self.route(x)
        merge = self.to_merge(hops)
        if self.earlier is None:
            return Candidate(merge=merge, seed=self.recipe.spec.seed)
        decoded = self.earlier.decode(np.asarray(x, dtype=float)[: self.offset])
        reads = tuple(name for name in self.reads if name in {hop.model for hop in hops} | {self.ends})
        return dataclasses.replace(decoded, merge=merge, reads=reads, before=_needed(decoded.before, reads))

    def to_merge(self, hops: Sequence[Hop]) -> MergeConfiguration:
        merge = self.recipe.merge
        return to_merge(hops, self.ends, dtype=merge.dtype, out_dtype=merge.out_dtype, filters=self.spec.scale_filters)

    def gallery(self) -> MergeConfiguration:
        """Every layer of every model once, embeddings and head from the named model: what stays resident."""
        return to_merge([Hop(m, i) for m in self.models for i in range(self.layers[m])], self.ends,
                        dtype=self.recipe.merge.dtype, out_dtype=self.recipe.merge.out_dtype)

    def largest_merge(self) -> MergeConfiguration:
        """A recipe that holds what the deepest candidate does: every model resident, `max_layers` layers."""
        deepest = self.to_merge([Hop(*self.slots[s]) for s in range(self.max_layers)])
        empty = [OutputSliceDefinition(sources=[InputSliceDefinition(model=m, layer_range=(0, 0))]) for m in self.models]
        return deepest.model_copy(update={"slices": empty + deepest.slices})

    def largest_stages(self) -> List[Stage]:
        return self.with_final(self.largest_merge())

    def with_final(self, merge: MergeConfiguration) -> List[Stage]:
        """The recipe's stages with `merge` as the final one, reading every earlier stage the route may take."""
        *before, final = self.recipe.stages
        return before + [dataclasses.replace(final, merge=merge, reads=self.reads)]

    def describe(self) -> List[Dict[str, Any]]:
        return (self.earlier.describe() if self.earlier else []) + self._describe_route()

    def _describe_route(self) -> List[Dict[str, Any]]:
        count = len(self.slots)
        described = []
        for gene in self.genes[self.offset:]:
            model, layer = self.slots[gene.group]
            place = f"layer {layer} of {Path(model).name or model} in slot {gene.group} of {count}"
            controls = (f"whether the route passes through {place} (included when positive)" if gene.parameter == INCLUDE
                        else f"the scale on the output projections ({', '.join(self.spec.scale_filters)}) of {place}, "
                             "when it is included")
            described.append({"name": gene.name, "low": gene.low, "high": gene.high, "controls": controls,
                              "slot": gene.group, **({"binary": True} if gene.parameter == INCLUDE else {})})
        return described


def _slots(models: List[str], layers: Dict[str, int], repeats: int) -> List[Tuple[str, int]]:
    """(model, layer) per slot: each model's layers in order, model after model, `repeats` times."""
    return [(m, i) for _ in range(repeats) for m in models for i in range(layers[m])]


def _stage_names(recipe: Recipe) -> List[str]:
    return [stage.name for stage in recipe.stages[:-1]]


def _needed(before: Sequence[Stage], reads: Sequence[str]) -> Tuple[Stage, ...]:
    """The earlier stages the final merge reads, and what they read in turn, in merge order."""
    needed, todo = set(), list(reads)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += stage_named(before, name).reads
    return tuple(stage for stage in before if stage.name in needed)


def _source(recipe: Recipe, model: str) -> str:
    """A model a routed model's config stands for: itself, or for an earlier stage the model it takes its
    config from (its base model, else its first), as mergekit-multi writes that stage."""
    names = _stage_names(recipe)
    while model in names:
        model = str(references(stage_named(recipe.stages, model).merge)[0][1])
    return model


def _layers(recipe: Recipe, models: List[str], key: str) -> Dict[str, int]:
    """Each model's layer count, once the models are one architecture family with one hidden size."""
    path, names = recipe.path, _stage_names(recipe)
    configs = {}
    for j, model in enumerate(models):
        try:
            configs[model] = ModelReference.parse(_source(recipe, model)).config()
        except (OSError, ValueError) as error:
            raise EvomergeError(f"cannot read the model's config: {str(error).splitlines()[0]}",
                                path=path, key=f"{key}.models[{j}]") from None
    first = configs[models[0]]
    for j, model in enumerate(models[1:], start=1):
        config = configs[model]
        for field in ("model_type", "hidden_size"):
            if getattr(config, field, None) != getattr(first, field, None):
                raise EvomergeError(f"expected one architecture family and hidden size: {field} is "
                                    f"{getattr(config, field, None)!r} here, {getattr(first, field, None)!r} in "
                                    f"{models[0]}", path=path, key=f"{key}.models[{j}]")
    merge = MergeConfiguration(merge_method="passthrough",
                               models=[InputModelDefinition(model=m) for m in dict.fromkeys(_source(recipe, m)
                                                                                            for m in models)])
    try:
        arch = get_architecture_info(merge, MergeOptions(quiet=True))
    except (RuntimeError, ValueError) as error:
        raise EvomergeError(f"mergekit cannot route these models: {error}", path=path, key=f"{key}.models") from None
    if len(arch.modules) != 1:
        raise EvomergeError(f"multi-module architectures ({', '.join(arch.modules)}) cannot be routed",
                            path=path, key=f"{key}.models")
    module = next(iter(arch.modules.values())).architecture
    _one_entry_per_list(configs, module.num_layers_config_key(), path, f"{key}.models")
    return {m: output_layers(recipe.stages, stage_named(recipe.stages, m)) if m in names
            else module.num_layers(configs[m]) for m in models}


def _one_entry_per_list(configs: Dict[str, Any], layers_key: str, path, key: str) -> None:
    """The resident model's layers are built once, each for its entries in the config's per-layer lists
    (`layer_types`): a route may put any layer anywhere, so each list must hold one value throughout."""
    found = [per_layer_lists(config, layers_key) for config in configs.values()]
    for name in dict.fromkeys(name for lists in found for name in lists):
        values = list(dict.fromkeys(repr(value) for lists in found for value in lists.get(name, [None])))
        if len(values) > 1:
            raise EvomergeError(f"`{name}` differs between the routed layers ({values[0]}, {values[1]}); routing "
                                f"needs one {name} in every layer", path=path, key=key)


def _start(recipe: Recipe, spec: RoutingSpec, models: List[str], layers: Dict[str, int],
           slots: List[Tuple[str, int]], key: str) -> Dict[int, Hop]:
    """The recipe's own route, slot by slot: its layers matched to the slots in order."""
    try:
        hops, ends = from_merge(recipe.merge, lambda m: layers.get(m, 0), spec.scale_filters)
    except ValueError as error:
        where, what = error.args
        raise EvomergeError(what, path=recipe.path, key=where) from None
    if spec.scale is None and any(hop.scale is not None for hop in hops):
        raise EvomergeError("the recipe scales its layers; give the routing block a `scale` range to search them",
                            path=recipe.path, key=f"{key}.scale")
    expected = models[spec.models.index(spec.ends)]
    if ends != expected:
        raise EvomergeError(f"the recipe takes its embeddings and head from {ends}, the routing block from {expected} "
                            "(`embeddings_from`, default: the first model)", path=recipe.path, key="base_model")
    found, slot = {}, 0
    for hop in hops:
        while slot < len(slots) and slots[slot] != (hop.model, hop.layer):
            slot += 1
        if slot == len(slots):
            raise EvomergeError(f"the recipe's route passes through layer {hop.layer} of {hop.model}, which no slot left "
                                f"in order holds (slots: {', '.join(Path(m).name for m in models)} x {spec.repeats})",
                                path=recipe.path, key="slices")
        found[slot] = hop
        slot += 1
    if not found:
        raise EvomergeError("expected a route of at least one layer", path=recipe.path, key="slices")
    return found
