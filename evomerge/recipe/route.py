"""A layer route (data-flow space, as Sakana's DFS searched it) and the plain mergekit recipe it is.

A route is the sequence of layers a token passes through, each taken from one of the models
with a scale on what it passes on. It is written as a `merge_method: passthrough` `slices:`
recipe: one slice per run of consecutive layers of one model with one scale, the scale set
through passthrough's per-input `scale` on the tensors the `scale_filters` name (the layer's
output projections, `o_proj` and `down_proj`), so `mergekit-yaml` merges exactly the route.
mergekit takes the embeddings from the first slice's model and the final norm and head from
the last slice's; when the route starts or ends in another model, an empty slice (layer range
[0, 0]) of the named model stands at that end, and `base_model` names it, which makes it the
donor of the output config and tokenizer (mergekit otherwise picks one of a set).

How mergekit 0.1.5 reads it: a filter matches a tensor whose output name contains it, and a
tensor no filter matches gets no scale, which passthrough copies as it is (`tensor * scale`
otherwise); the output's layer count is the sum of the slices' lengths, empty slices adding none.
It changes the layer count alone: a config's per-layer lists (Qwen2's and Gemma's `layer_types`)
keep the donor's length, which transformers refuses; evomerge's output config makes them follow
the route (`per_layer_lists`, merge/output_model.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mergekit.config import ConditionalParameter, InputSliceDefinition, MergeConfiguration, OutputSliceDefinition
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

SCALE_FILTERS = ["o_proj", "down_proj"]
NOT_PER_LAYER = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id"}  # lists that may match by chance


class RoutingSpec(BaseModel):
    """The slots are each model's layers in order, the models one after another, all of it `repeats`
    times; a candidate passes through the slots whose inclusion gene is positive, in slot order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    models: List[str] = Field(min_length=1, description="The distinct models whose layers make the slots, in order.")
    repeats: PositiveInt = Field(1, description="How many times the slots of all the models repeat.")
    max_layers: Optional[PositiveInt] = Field(None, description="The deepest candidate, which bounds the output "
                                                                "model's memory; default: every slot.")
    scale: Optional[Tuple[float, float]] = Field(None, description="The range of a searched scale per included "
                                                                   "layer, 0 <= low < high; default: no scale.")
    scale_filters: List[str] = Field(default_factory=lambda: list(SCALE_FILTERS), min_length=1,
                                     description="The tensors the scale multiplies (by name filter): the layer's "
                                                 "output projections.")
    embeddings_from: Optional[str] = Field(None, description="The model giving the embeddings, final norm and head, "
                                                             "one of `models`; default: the first.")

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: List[str]) -> List[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"expected distinct models (`repeats` repeats them), got {models}")
        return models

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value):
        if value is not None:
            low, high = value
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
                raise ValueError(f"expected [low, high], finite, with 0 <= low < high, got [{low}, {high}]")
        return value

    @model_validator(mode="after")
    def _embeddings_model_routed(self) -> "RoutingSpec":
        if self.embeddings_from is not None and self.embeddings_from not in self.models:
            raise ValueError(f"embeddings_from must be one of the models ({', '.join(self.models)}), "
                             f"got {self.embeddings_from!r}")
        return self

    @property
    def ends(self) -> str:
        return self.embeddings_from or self.models[0]


class RoutingEntry(BaseModel):
    """`search: [{routing: {...}}]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    routing: RoutingSpec = Field(description="The layer route's search space.")


@dataclass(frozen=True)
class Hop:
    """One layer of a route: `layer` of `model`, its output projections times `scale` (None: as it is)."""

    model: str
    layer: int
    scale: Optional[float] = None


def to_merge(hops: Sequence[Hop], ends: str, *, dtype: Optional[str] = None, out_dtype: Optional[str] = None,
             filters: Sequence[str] = SCALE_FILTERS) -> MergeConfiguration:
    """The passthrough recipe that merges exactly this route."""
    slices: List[Tuple[str, int, int, Optional[float]]] = []  # model, start, end, scale
    for hop in hops:
        last = slices[-1] if slices else None
        if last and last[0] == hop.model and last[2] == hop.layer and last[3] == hop.scale:
            slices[-1] = (last[0], last[1], last[2] + 1, last[3])
        else:
            slices.append((hop.model, hop.layer, hop.layer + 1, hop.scale))
    if not slices or slices[0][0] != ends:
        slices.insert(0, (ends, 0, 0, None))
    if slices[-1][0] != ends:
        slices.append((ends, 0, 0, None))
    return MergeConfiguration(
        merge_method="passthrough", base_model=ends, dtype=dtype, out_dtype=out_dtype,
        slices=[OutputSliceDefinition(sources=[InputSliceDefinition(
            model=model, layer_range=(start, end),
            parameters=None if scale is None else {"scale": [ConditionalParameter(filter=f, value=scale)
                                                             for f in filters]})])
            for model, start, end, scale in slices])


def from_merge(merge: MergeConfiguration, layers: Callable[[str], int],
               filters: Sequence[str] = SCALE_FILTERS) -> Tuple[List[Hop], str]:
    """The route a passthrough recipe is (as `to_merge` writes it, or a `models:` recipe of one model),
    and the model its embeddings come from; ValueError(key, what) for a recipe that is not a route."""
    if merge.merge_method != "passthrough":
        raise ValueError("merge_method", f"a routing search starts from a passthrough recipe, got {merge.merge_method!r}")
    if merge.models:
        model = str(merge.models[0].model)
        if len(merge.models) != 1 or merge.models[0].parameters:
            raise ValueError("models", "expected one model without parameters, or `slices:`")
        return [Hop(model, i) for i in range(layers(model))], str(merge.base_model or model)
    if merge.parameters or not merge.slices:
        raise ValueError("parameters" if merge.parameters else "slices",
                         "expected `slices:` whose sources alone set the scale")
    hops: List[Hop] = []
    for j, out_slice in enumerate(merge.slices):
        if len(out_slice.sources) != 1 or out_slice.parameters:
            raise ValueError(f"slices[{j}]", "expected one source per slice, its scale in its own parameters")
        source = out_slice.sources[0]
        scale = _scale(source.parameters, filters)
        if scale is False:
            raise ValueError(f"slices[{j}].sources[0].parameters",
                             f"expected only `scale: [{{filter: f, value: s}}, ...]` for f in {list(filters)}, one s")
        hops += [Hop(str(source.model), i, scale) for i in range(*source.layer_range)]
    return hops, str(merge.base_model or merge.slices[0].sources[0].model)


def _scale(parameters, filters: Sequence[str]):
    """The one scale a source's parameters give its filtered tensors; None without; False if not a route's."""
    if not parameters:
        return None
    setting = parameters.get("scale")
    if set(parameters) != {"scale"} or not isinstance(setting, list) or len(setting) != len(filters):
        return False
    if [getattr(c, "filter", None) for c in setting] != list(filters):
        return False
    values = {c.value for c in setting}
    value = next(iter(values))
    return float(value) if len(values) == 1 and isinstance(value, (int, float)) and not isinstance(value, bool) \
        else False


def per_layer_lists(config, layers_key: str) -> Dict[str, List[Any]]:
    """A config's lists with an entry per layer (`layer_types` first), by dotted key: every list beside
    the layer count (`layers_key`, mergekit's num_layers_config_key) that is as long."""
    *path, count = layers_key.split(".")
    holder = functools.reduce(getattr, path, config)
    prefix = "".join(f"{part}." for part in path)
    ordered = sorted(vars(holder).items(), key=lambda item: item[0] != "layer_types")
    return {f"{prefix}{name}": value for name, value in ordered
            if isinstance(value, list) and len(value) == getattr(holder, count) and name not in NOT_PER_LAYER}
