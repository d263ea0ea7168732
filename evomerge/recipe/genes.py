"""The genes of `search:`'s parameter entries, each checked against the recipe it writes to.

A gene is one number in one place of a mergekit recipe: a parameter of one input model
(or a shared parameter), for one tensor-name filter (or the fallback), at one point of
an N-point mergekit gradient across the layers (or one explicit layer range). Its start is
the recipe's own value there, as mergekit would resolve it. A stage's layer counts live here
too (routing.py counts its slots with them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mergekit import merge_methods
from mergekit.config import MergeConfiguration, evaluate_setting
from mergekit.merge_methods.base import ParameterScope, ParameterSpec

from evomerge.errors import SECTION, EvomergeError, did_you_mean
from evomerge.recipe import layout
from evomerge.recipe.candidate import NOISE, Gene
from evomerge.recipe.loading import Recipe
from evomerge.recipe.references import resolve_model_path
from evomerge.recipe.schema import GeneSpec
from evomerge.recipe.space import SearchSpace
from evomerge.recipe.stages import stage_named


def parameter_space(recipe: Recipe) -> SearchSpace:
    """The genes of `search:`'s parameter entries, each in the stage it names, and the final merge's
    searched noise (a routing block's genes are its own space's, recipe/routing.py)."""
    genes: List[Gene] = []
    x0: List[float] = []
    builders: Dict[Optional[str], _Builder] = {}

    def builder(name: Optional[str]) -> _Builder:
        stage = stage_named(recipe.stages, name)
        if stage.name not in builders:
            builders[stage.name] = _Builder(recipe, stage, genes, x0)
        return builders[stage.name]

    final = builder(None)
    for index, spec in enumerate(recipe.spec.search):
        if isinstance(spec, GeneSpec):
            builder(spec.stage).add(index, spec)
    final.add_noise()
    return SearchSpace(recipe, genes, np.array(x0, dtype=float))


def count_layers(merge: MergeConfiguration) -> int:
    """Layers of the recipe's models (mergekit's own architecture tables)."""
    from mergekit.architecture import get_architecture_info
    from mergekit.options import MergeOptions

    arch = get_architecture_info(merge, MergeOptions())
    if len(arch.modules) != 1:
        raise EvomergeError(f"multi-module architectures ({', '.join(arch.modules)}) cannot be searched yet")
    module = next(iter(arch.modules.values()))
    reference = merge.base_model or merge.referenced_models()[0]
    return module.architecture.num_layers(reference.config())


def input_layers(stages: Sequence[layout.Stage], stage: layout.Stage) -> int:
    """Layers of a stage's input models (an earlier stage's output counted from that stage's recipe)."""
    if not stage.reads:
        return count_layers(stage.merge)
    reference = next(reference for _, reference in layout.references(stage.merge))
    if reference.model.path not in stage.reads:
        return count_layers(MergeConfiguration(merge_method=stage.merge.merge_method, models=[{"model": reference}]))
    return output_layers(stages, stage_named(stages, reference.model.path))


def output_layers(stages: Sequence[layout.Stage], stage: layout.Stage) -> int:
    """Layers of a stage's output: its slices' layers, or its inputs'."""
    return sum(s.layers for s in layout.sections(stage.merge)) if stage.merge.slices else input_layers(stages, stage)


class _Builder:
    """Turns the recipe's `search:` entries into genes, validating them against the recipe."""

    def __init__(self, recipe: Recipe, stage: layout.Stage, genes: List[Gene], x0: List[float]):
        self.recipe = recipe
        self.stage = stage
        self.merge = stage.merge
        self.method = merge_methods.get(self.merge.merge_method)
        if self.merge.modules:
            raise EvomergeError("`modules:` recipes cannot be searched yet; use `models:` or `slices:`",
                                path=recipe.path, key=stage.key("modules"))
        self.genes = genes
        self.x0 = x0
        self._seen: set = set()
        self._layers: Optional[int] = None

    def layers(self) -> int:
        if self._layers is None:
            self._layers = input_layers(self.recipe.stages, self.stage)
        return self._layers

    def _error(self, message: str, index: int, field: str) -> EvomergeError:
        return EvomergeError(message, path=self.recipe.path, key=f"{SECTION}.search[{index}].{field}")

    def _parameter(self, index: int, spec: GeneSpec) -> Tuple[ParameterSpec, bool]:
        shared = {p.name: p for p in self.method.spec.shared_parameters}
        per_input = {p.name: p for p in self.method.spec.input_parameters}
        parameter = shared.get(spec.parameter) or per_input.get(spec.parameter)
        if parameter is None:
            names = sorted(shared) + sorted(per_input)
            raise self._error(
                f"{self.merge.merge_method} has no parameter {spec.parameter!r}{did_you_mean(spec.parameter, names)}; "
                f"expected one of {', '.join(names) or '(none)'}", index, "parameter")
        if _numeric_type(parameter) is None:
            raise self._error(f"{spec.parameter!r} is not numeric ({getattr(parameter.value_type, '__name__', parameter.value_type)}); "
                              "only float and int parameters can be searched", index, "parameter")
        return parameter, spec.parameter in per_input

    def _slices(self) -> List[Tuple[Optional[int], List[str], int]]:
        """(section index, input models, layers) per place a gene can live."""
        return [(s.index, s.models(), s.layers or self.layers()) for s in layout.sections(self.merge)]

    def _models(self, index: int, spec: GeneSpec, parameter: ParameterSpec, inputs: List[str]) -> List[str]:
        base = str(self.merge.base_model) if self.merge.base_model else None
        eligible = [m for m in inputs if parameter.scope == ParameterScope.INPUT or m != base]
        if spec.models is None:
            return eligible
        chosen = []
        for position, name in enumerate(spec.models):
            model = name if name in self.stage.reads else resolve_model_path(name, self.recipe.directory)
            key = f"{SECTION}.search[{index}].models[{position}]"
            if model == base and model not in eligible:
                raise EvomergeError(f"{spec.parameter!r} does not apply to the base model {name!r}",
                                    path=self.recipe.path, key=key)
            if model not in inputs:
                raise EvomergeError(f"model {name!r} is not an input of the recipe; expected one of {', '.join(inputs)}",
                                    path=self.recipe.path, key=key)
            chosen.append(model)
        return chosen

    def add(self, index: int, spec: GeneSpec) -> None:
        parameter, is_input = self._parameter(index, spec)
        if not is_input and spec.models is not None:
            raise self._error(f"{spec.parameter!r} is shared by all inputs of {self.merge.merge_method}; remove `models`", index, "models")
        for slice_index, inputs, layers in self._slices():
            if spec.layer_ranges is not None and spec.layer_ranges[-1][1] != layers:
                raise self._error(f"the layer ranges end at layer {spec.layer_ranges[-1][1]}, but the models have "
                                  f"{layers} layers", index, "layer_groups")
            if spec.group_count > layers:
                raise self._error(f"{spec.group_count} layer groups, but the models have {layers} layers", index, "layer_groups")
            for model in self._models(index, spec, parameter, inputs) if is_input else [None]:
                key = (spec.parameter, model, slice_index)
                if key in self._seen:
                    raise self._error(f"{spec.parameter!r} is searched twice for {model or 'the recipe'}", index, "parameter")
                self._seen.add(key)
                current = self._current_setting(spec.parameter, model, slice_index)
                for filter_name in list(spec.filters) + [None]:
                    for group in range(spec.group_count):
                        self._gene(spec, parameter, model, filter_name, group, slice_index, current, layers)

    def _gene(self, spec, parameter, model, filter_name, group, slice_index, current, layers) -> None:
        label = (f"{self.stage.name}/" if self.stage.name else "") + spec.parameter
        if model:
            label += f"[{Path(model).name or model}]"
        if slice_index is not None:
            label += f"/slice{slice_index}"
        if spec.filters:
            label += f".{filter_name or '*'}"
        count = spec.group_count
        if count > 1:
            label += f"@{group}"
        low, high = spec.range
        if spec.layer_ranges is not None:  # the recipe's value at the range's middle layer
            start_layer, end_layer = spec.layer_ranges[group]
            t = (start_layer + end_layer - 1) / 2 / (layers - 1) if layers > 1 else 0.5
        else:
            t = group / (count - 1) if count > 1 else 0.5
        start = _numeric(current, filter_name or "", t, parameter)
        if start is not None and not (isinstance(start, (int, float)) and not isinstance(start, bool)
                                      and math.isfinite(start)):
            raise EvomergeError(f"the recipe sets {spec.parameter} to {start!r} for {model or 'the merge'}; expected "
                                "a finite number to start the search from", path=self.recipe.path, key=spec.parameter)
        self.genes.append(Gene(label, spec.parameter, low, high, group, count, model, filter_name,
                               slice_index, _numeric_type(parameter) is int, spec.layer_ranges, self.stage.name))
        self.x0.append(float(np.clip(start, low, high)) if start is not None else (low + high) / 2)

    def _current_setting(self, parameter: str, model: Optional[str], slice_index: Optional[int]) -> List[Any]:
        """The recipe's own settings for this place, highest precedence first."""
        return [c[parameter] for c in layout.precedence(self.merge, slice_index, model) if parameter in c]

    def add_noise(self) -> None:
        noise = self.recipe.spec.noise
        if noise is None or noise.range is None:
            return
        if noise.layer_groups > self.layers():
            raise EvomergeError(f"{noise.layer_groups} layer groups, but the models have {self.layers()} layers",
                                path=self.recipe.path, key=f"{SECTION}.noise.layer_groups")
        low, high = noise.range
        for group in range(noise.layer_groups):
            t = group / (noise.layer_groups - 1) if noise.layer_groups > 1 else 0.5
            start = evaluate_setting("", noise.std, t, validate=float) if noise.std is not None else None
            self.genes.append(Gene(NOISE + (f"@{group}" if noise.layer_groups > 1 else ""), NOISE, low, high,
                                   group, noise.layer_groups))
            self.x0.append(float(np.clip(start, low, high)) if start is not None else (low + high) / 2)


def _numeric_type(parameter: ParameterSpec) -> Optional[type]:
    """float or int for searchable parameters (Optional[...] included), else None."""
    kinds = [t for t in getattr(parameter.value_type, "__args__", (parameter.value_type,)) if t is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (float, int) else None


def _numeric(settings: List[Any], tensor_name: str, t: float, parameter: ParameterSpec) -> Any:
    """The value mergekit would resolve from `settings` (a float when it is a number; anything
    else is the caller's to refuse), or None when none applies here."""
    for setting in settings:
        try:
            value = evaluate_setting(tensor_name, setting, t, validate=lambda v: v)
        except RuntimeError:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if value is not None:
            return value
    return None
