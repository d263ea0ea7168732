"""One normalized view of every recipe shape, so the modules after loading have one path.

mergekit's planner turns a `models:` recipe into one output slice over every layer before
it plans (`MergePlanner.normalize_config`); evomerge reads recipes the same way. A
`models:` recipe is one section whose inputs are the models; a `slices:` recipe has one
section per output slice, whose inputs are the slice's sources. Which models a recipe
merges, which layers each section covers, which `parameters:` mappings a gene writes and
what the recipe already sets there are all answered from the sections. The recipe itself
keeps its shape: genes write into a copy of it, so the exported recipe looks like the
user's.

A recipe is a chain of stages (`mergekit-multi`'s documents, each named; later ones name earlier
ones as a model); a one-document recipe is one unnamed stage, so every later module walks stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration


@dataclass(frozen=True)
class Stage:
    """One merge of a recipe: a mergekit recipe whose models may be earlier stages' outputs, by name."""

    name: Optional[str]  # None: the unnamed final merge (every one-document recipe)
    merge: MergeConfiguration
    document: Optional[int] = None  # the YAML document it comes from; None for a one-document recipe
    reads: Tuple[str, ...] = ()  # the earlier stages it merges, by name

    def key(self, key: str) -> str:
        """An error key inside this stage's document, e.g. 'documents[1].models[0].model'."""
        return document_key(self.document, key)


def document_key(document: Optional[int], key: str) -> str:
    """`key` inside the YAML document of that index (None: the recipe's one document)."""
    return key if document is None else f"documents[{document}]" + (f".{key}" if key else "")


def parent_references(stages: Sequence[Stage]) -> List[Tuple[str, ModelReference]]:
    """(error key, model) for every model the stages read from disk or the Hub, first occurrence only;
    an earlier stage's output is no parent: it is merged here."""
    names = {stage.name for stage in stages}
    seen, found = set(), []
    for stage in stages:
        for key, reference in references(stage.merge):
            if reference.model.path not in names and reference not in seen:
                seen.add(reference)
                found.append((stage.key(key), reference))
    return found


@dataclass(frozen=True)
class Input:
    model: ModelReference
    key: str  # where the recipe names the model, e.g. "models[1].model", "slices[0].sources[2].model"
    layer_range: Optional[Tuple[int, int]] = None  # None: every layer, in the model's own order


@dataclass(frozen=True)
class Section:
    index: Optional[int]  # the output slice; None for the single section of a `models:` recipe
    inputs: Tuple[Input, ...]
    out_start: int = 0  # the first output layer the section writes

    @property
    def layers(self) -> Optional[int]:
        """Layers the section covers; None for every layer of the model."""
        ranges = [i.layer_range for i in self.inputs if i.layer_range is not None]
        return ranges[0][1] - ranges[0][0] if ranges else None

    def models(self) -> List[str]:
        return [str(i.model) for i in self.inputs]

    def in_place(self, model: ModelReference) -> bool:
        """Whether the model's inputs here are its own layers at the same output positions."""
        return all(i.layer_range is None or i.layer_range[0] == self.out_start for i in self.inputs if i.model == model)


def sections(merge: MergeConfiguration) -> List[Section]:
    if not merge.slices:
        return [Section(None, tuple(Input(m.model, f"models[{i}].model") for i, m in enumerate(merge.models or [])))]
    found, start = [], 0
    for j, out_slice in enumerate(merge.slices):
        inputs = tuple(Input(s.model, f"slices[{j}].sources[{k}].model", tuple(s.layer_range))
                       for k, s in enumerate(out_slice.sources))
        found.append(Section(j, inputs, start))
        start += found[-1].layers
    return found


def whole_models(merge: MergeConfiguration) -> bool:
    """Whether every input is a whole model (a `models:` recipe), so all must hold the same tensors."""
    return all(s.layers is None for s in sections(merge))


def references(merge: MergeConfiguration) -> List[Tuple[str, ModelReference]]:
    """(recipe key, model) for every model the recipe names, first occurrence only."""
    places = [("base_model", merge.base_model)] if merge.base_model else []
    places += [(i.key, i.model) for section in sections(merge) for i in section.inputs]
    seen, unique = set(), []
    for key, reference in places:
        if reference not in seen:
            seen.add(reference)
            unique.append((key, reference))
    return unique


def parameter_holders(merge: MergeConfiguration, index: Optional[int], model: Optional[str]) -> List[Any]:
    """The recipe entries whose `parameters:` a gene for this section writes: the model's own
    entries for a per-input parameter, the section's (or the recipe's) for a shared one."""
    if index is None:
        return [m for m in merge.models if str(m.model) == model] if model else [merge]
    out_slice = merge.slices[index]
    return [s for s in out_slice.sources if str(s.model) == model] if model else [out_slice]


def precedence(merge: MergeConfiguration, index: Optional[int], model: Optional[str]) -> List[dict]:
    """The `parameters:` mappings mergekit reads for this place, highest precedence first."""
    chain = [h.parameters for h in parameter_holders(merge, index, model)] if model else []
    if index is not None:
        chain.append(merge.slices[index].parameters)
    chain.append(merge.parameters)
    return [c for c in chain if c]
