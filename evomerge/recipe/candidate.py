"""A gene, and a candidate: the concrete recipe a vector decodes to, as mergekit reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml
from mergekit.common import ModelReference
from mergekit.config import ConfigYamlDumper, MergeConfiguration

from evomerge.errors import SECTION
from evomerge.recipe import layout
from evomerge.recipe.loading import Recipe

NOISE = "noise"


@dataclass(frozen=True)
class Gene:
    name: str
    parameter: str
    low: float
    high: float
    group: int = 0
    groups: int = 1
    model: Optional[str] = None  # an input model's reference; None for shared parameters and noise
    filter: Optional[str] = None  # None is the fallback for tensors no filter matches
    slice_index: Optional[int] = None
    integer: bool = False
    layer_ranges: Optional[Tuple[Tuple[int, int], ...]] = None  # explicit groups [start, end); None: even gradient
    stage: Optional[str] = None  # the stage whose recipe it writes (its name is the gene name's first part); None: the final


class _RecipeDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """mergekit's ConfigYamlDumper (lists of numbers in flow style) on libyaml's emitter: the same
    text four times faster, for the search loop that writes every proposal's recipe."""


_RecipeDumper.add_representer(list, ConfigYamlDumper.represent_list)


@dataclass(frozen=True)
class Candidate:
    """A concrete recipe: what `mergekit-yaml` (`mergekit-multi` for several stages) merges, plus
    evomerge's seed and noise (applied to the final merge)."""

    merge: MergeConfiguration  # the final merge
    seed: int
    noise: Optional[Tuple[float, ...]] = None  # relative std per layer group
    before: Tuple[layout.Stage, ...] = ()  # the earlier stages of a multi-stage recipe, in merge order
    name: Optional[str] = None  # the final merge's stage name, if it has one
    reads: Tuple[str, ...] = ()  # the earlier stages the final merge reads

    @classmethod
    def written(cls, recipe: Recipe) -> "Candidate":
        """The recipe as its file has it: every stage with its own values, no gene written."""
        *before, final = recipe.stages
        return cls(merge=final.merge, seed=recipe.spec.seed, noise=fixed_noise(recipe), before=tuple(before),
                   name=final.name, reads=final.reads)

    @property
    def stages(self) -> Tuple[layout.Stage, ...]:
        return self.before + (layout.Stage(self.name, self.merge, reads=self.reads),)

    def parents(self) -> List[ModelReference]:
        """Every model the stages read from disk or the Hub (not an earlier stage's output), sorted."""
        return sorted((reference for _, reference in layout.parent_references(self.stages)), key=str)

    def to_dict(self) -> Dict[str, Any]:
        """The final merge's document (with its `evomerge:` section)."""
        data = self._document(self.stages[-1])
        section: Dict[str, Any] = {"seed": self.seed}
        if self.noise is not None and any(self.noise):
            section["noise"] = {"std": list(self.noise) if len(self.noise) > 1 else self.noise[0]}
        data[SECTION] = section
        return data

    @staticmethod
    def _document(stage: layout.Stage) -> Dict[str, Any]:
        return {**({"name": stage.name} if stage.name else {}), **stage.merge.model_dump(exclude_defaults=True, mode="json")}

    def to_yaml(self) -> str:
        """The recipe as mergekit reads it: one document, or mergekit-multi's documents in merge order."""
        documents = [self._document(stage) for stage in self.before] + [self.to_dict()]
        return yaml.dump_all(documents, Dumper=_RecipeDumper, sort_keys=False).rstrip() + "\n"


def fixed_noise(recipe: Recipe) -> Optional[Tuple[float, ...]]:
    """The noise a recipe applies as given (`noise: {std: ...}`), to its start and every candidate; None if searched."""
    noise = recipe.spec.noise
    if noise is None or noise.range is not None:
        return None
    return tuple(noise.std) if isinstance(noise.std, list) else (float(noise.std),)
