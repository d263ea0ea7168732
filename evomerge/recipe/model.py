"""Reads a mergekit recipe with an `evomerge:` section and validates it once, at the edge.

The file stays an ordinary mergekit recipe: `mergekit-yaml` ignores the `evomerge:` key.
Relative model paths and task paths are taken relative to the recipe file when they
exist there, so a recipe works from any working directory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml
from mergekit import merge_methods
from mergekit.common import dtype_from_name
from mergekit.config import InputModelDefinition, MergeConfiguration
from mergekit.evo.genome import METHOD_PARAM_MAPS, ModelGenomeDefinition
from mergekit.merge_methods.base import BasePolicy
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from evomerge.errors import SECTION, TAG, EvomergeError, did_you_mean, validated
from evomerge.recipe.layout import Stage
from evomerge.recipe.route import RoutingEntry
from evomerge.recipe.track import TrackSpec
from evomerge.searchers.spec import SearcherSpec

MODEL_KEYS = {"model", "base_model", "tokenizer_source", "source"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: Tuple[float, float]) -> Tuple[float, float]:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"expected [low, high], finite, with low < high, got [{low}, {high}]")
    return value


class GeneSpec(_Strict):
    """One searched mergekit parameter, split into genes per model, filter and layer group."""

    parameter: str
    stage: Optional[str] = None  # the stage (a multi-stage recipe's document name); default: the final merge
    models: Optional[List[str]] = None
    range: Tuple[float, float]
    layer_groups: Union[int, List[Tuple[int, int]]] = 1
    filters: List[str] = Field(default_factory=list)

    _range = field_validator("range")(_check_range)

    @field_validator("layer_groups", mode="wrap")
    @classmethod
    def _groups(cls, value, handler):
        """N evenly spread gradient points, or explicit layer ranges [start, end) (as `evomerge tree
        --suggest-groups` prints them) that follow each other from layer 0."""
        expected = "expected a number of layer groups or contiguous layer ranges from layer 0 like [[0, 2], [2, 4]]"
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"expected at least 1 layer group, got {value}")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"{expected}, got {value!r}")
        end = 0
        for entry in value:
            if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] != end
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry) or entry[1] <= entry[0]):
                raise ValueError(f"{expected}, got {value!r}")
            end = entry[1]
        return [tuple(entry) for entry in value]

    @property
    def group_count(self) -> int:
        return self.layer_groups if isinstance(self.layer_groups, int) else len(self.layer_groups)

    @property
    def layer_ranges(self) -> Optional[Tuple[Tuple[int, int], ...]]:
        return None if isinstance(self.layer_groups, int) else tuple(tuple(r) for r in self.layer_groups)

    @field_validator("filters")
    @classmethod
    def _distinct_filters(cls, filters: List[str]) -> List[str]:
        if len(set(filters)) != len(filters) or any(not f for f in filters):
            raise ValueError("expected distinct, non-empty tensor-name filters")
        return filters


class NoiseSpec(_Strict):
    """Weight-space mutation: Gaussian noise of std = value × the merged tensor's std.

    With `range` the values are searched (`std` is then the starting point); without it,
    `std` is applied as given, which is how an exported winner carries its noise.
    """

    range: Optional[Tuple[float, float]] = None
    layer_groups: PositiveInt = 1
    std: Optional[Union[float, List[float]]] = None

    @field_validator("range")
    @classmethod
    def _noise_range(cls, value):
        if value is None:
            return value
        _check_range(value)
        if value[0] < 0:
            raise ValueError(f"expected a non-negative range, got [{value[0]}, {value[1]}]")
        return value

    @model_validator(mode="after")
    def _range_or_std(self) -> "NoiseSpec":
        if self.range is None and self.std is None:
            raise ValueError("expected `range` (to search the noise) or `std` (to apply it)")
        values = self.std if isinstance(self.std, list) else [self.std] if self.std is not None else []
        if any(v < 0 for v in values):
            raise ValueError(f"expected non-negative std values, got {self.std}")
        return self


class TaskSpec(_Strict):
    name: str
    metric: str = "acc"
    weight: float = 1.0


DTYPES = ("float32", "float16", "bfloat16")


class RacingSpec(_Strict):
    """Score each candidate in stages on growing shares of the search documents (one order,
    shuffled once per run) and stop one that cannot, with this confidence, beat the bar (the
    `rank`-th best fully scored candidate so far) by more than `margin` of the bar's standard errors."""

    stages: List[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    rank: PositiveInt = 1
    margin: NonNegativeFloat = 0.0

    @field_validator("stages")
    @classmethod
    def _growing_to_all(cls, stages: List[float]) -> List[float]:
        if not stages or stages[-1] != 1.0 or any(not 0 <= a < b for a, b in zip([0.0] + stages, stages)):
            raise ValueError(f"expected growing shares of the documents ending at 1.0, e.g. [0.25, 0.5, 1.0], got {stages}")
        return stages


class EvalSpec(_Strict):
    """How candidates are scored: lm-eval's own options, as `lm_eval --help` names them."""

    batch_size: Union[PositiveInt, Literal["auto"], None] = None  # default: auto on CUDA, 64 elsewhere (device_defaults.py)
    limit: Optional[PositiveInt] = None
    num_fewshot: Optional[NonNegativeInt] = None
    apply_chat_template: Union[bool, str] = False  # True: the tokenizer's template; a string names one
    fewshot_as_multiturn: bool = False
    system_instruction: Optional[str] = None
    gen_kwargs: Dict[str, Any] = Field(default_factory=dict)  # for generate_until tasks, over each task's own
    max_length: Optional[PositiveInt] = None
    dtype: Optional[str] = None  # the dtype candidates are scored in; default: device_defaults.scoring_dtype
    racing: Optional[RacingSpec] = None  # `true` for the defaults

    @field_validator("racing", mode="before")
    @classmethod
    def _racing_switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and value not in DTYPES:
            raise ValueError(f"expected one of {', '.join(DTYPES)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _multiturn_needs_a_template(self) -> "EvalSpec":
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn needs apply_chat_template")
        return self


class GenomeSpec(ModelGenomeDefinition):
    """mergekit-evolve's genome (its own type and checks), searched as mergekit-evolve searches it:
    its genotype layout, decoded by its own `genotype_merge_config` (see genome.GenomeSpace).

    mergekit-evolve's CMA-ES is unbounded; evomerge's searchers need a box, so each genotype
    parameter gets a range (default [0, 1]; weights [-1, 1] with `allow_negative_weights`).
    `random_init` starts at a uniform draw from [0, 1) (mergekit-evolve's), seeded by the run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    random_init: bool = False
    ranges: Dict[str, Tuple[float, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_ranges(self) -> "GenomeSpec":
        names = METHOD_PARAM_MAPS.get(self.merge_method, [])
        for name, value in self.ranges.items():
            if name not in names:
                raise ValueError(f"{self.merge_method}'s genotype has no {name!r}; expected one of {', '.join(names)}")
            _check_range(value)
        return self

    def range_of(self, parameter: str) -> Tuple[float, float]:
        default = (-1.0, 1.0) if self.allow_negative_weights and parameter == "weight" else (0.0, 1.0)
        return self.ranges.get(parameter, default)


class BudgetSpec(_Strict):
    evaluations: PositiveInt


class ConfirmSpec(_Strict):
    """Before crowning: the `top` best fully scored candidates are scored on these tasks, which the
    search never optimized and the report does not show, and the best there wins. The search's own
    best is the best of many tries on the search documents, so its lead there is partly luck."""

    top: PositiveInt
    tasks: List[str] = Field(min_length=1)


def _entry_kind(entry: Any) -> str:
    routing = isinstance(entry, RoutingEntry) or isinstance(entry, dict) and "routing" in entry
    return TAG + ("routing" if routing else "gene")


SearchEntry = Annotated[Union[Annotated[GeneSpec, Tag(TAG + "gene")], Annotated[RoutingEntry, Tag(TAG + "routing")]],
                        Discriminator(_entry_kind)]  # a parameter's genes, or a layer route's (route.py)


class EvomergeSpec(_Strict):
    seed: int = Field(0, ge=0, le=2**32 - 1)  # also mergekit's --random-seed, which numpy bounds
    search: List[SearchEntry] = Field(default_factory=list)
    genome: Optional[GenomeSpec] = None  # a mergekit-evolve genome instead of `search`/`noise`
    noise: Optional[NoiseSpec] = None
    tasks: List[TaskSpec] = Field(default_factory=list)
    fitness: Optional[str] = None
    objectives: Literal["sum", "separate"] = "sum"
    report_tasks: List[str] = Field(default_factory=list)
    task_paths: List[str] = Field(default_factory=list)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    budget: Optional[BudgetSpec] = None
    eval: EvalSpec = Field(default_factory=EvalSpec)
    parents: Literal["device", "host"] = "device"  # where the parents' tensors stay (see Materializer)
    confirm: Optional[ConfirmSpec] = None
    track: TrackSpec = Field(default_factory=TrackSpec)  # experiment trackers (track.py)

    @model_validator(mode="after")
    def _genome_alone(self) -> "EvomergeSpec":
        if self.genome is not None and (self.search or self.noise is not None):
            raise ValueError("a genome is the whole search space; remove `search` and `noise` (or the genome)")
        return self

    @field_validator("fitness")
    @classmethod
    def _module_function(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"expected 'module:function', got {value!r}")
        return value


@dataclass(frozen=True)
class Recipe:
    path: Path
    text: str
    stages: Tuple[Stage, ...]  # in merge order, the final merge last; one for a one-document recipe
    spec: EvomergeSpec

    @property
    def merge(self) -> MergeConfiguration:
        """The final merge: the model that is scored."""
        return self.stages[-1].merge

    @property
    def directory(self) -> Path:
        return self.path.parent

    def task_paths(self) -> List[Path]:
        paths = []
        for index, entry in enumerate(self.spec.task_paths):
            path = (self.directory / entry).resolve()
            if not path.is_dir():
                raise EvomergeError(f"expected a folder of lm-eval task YAML files, found nothing at {path}",
                                    path=self.path, key=f"{SECTION}.task_paths[{index}]")
            paths.append(path)
        return paths

    def with_overrides(self, *, seed: Optional[int] = None, evaluations: Optional[int] = None,
                       searcher: Optional[str] = None, searcher_options: Mapping[str, Any] = {},
                       batch_size: Optional[int] = None, task_paths: Sequence[str] = ()) -> "Recipe":
        """The recipe as the command line amends it (`--seed`, `--evaluations`, `--searcher`, and
        mergekit-evolve's `--sigma0`, `--force-population-size`, `--batch-size` and
        `--task-search-path`, which adds task folders)."""
        update: Dict[str, Any] = {}
        if seed is not None:
            update["seed"] = seed
        if evaluations is not None:
            update["budget"] = BudgetSpec(evaluations=evaluations)
        if searcher is not None and searcher != self.spec.searcher.name:
            update["searcher"] = SearcherSpec(name=searcher)
        if searcher_options:
            current = update.get("searcher", self.spec.searcher)
            update["searcher"] = SearcherSpec(**{**current.model_dump(), **searcher_options})
        if batch_size is not None:
            update["eval"] = self.spec.eval.model_copy(update={"batch_size": batch_size})
        if task_paths:
            update["task_paths"] = list(self.spec.task_paths) + [str(Path(p).resolve()) for p in task_paths]
        return dataclasses.replace(self, spec=self.spec.model_copy(update=update))

    def require_search(self) -> None:
        """What `evomerge search` needs beyond what `evomerge merge` needs."""
        searched_noise = self.spec.noise is not None and self.spec.noise.range is not None
        if not self.spec.search and self.spec.genome is None and not searched_noise:
            raise EvomergeError("expected at least one searched parameter (or a noise range)",
                                path=self.path, key=f"{SECTION}.search")
        if not self.spec.tasks and self.spec.fitness is None:
            raise EvomergeError("expected lm-eval tasks (or a custom fitness) to score candidates",
                                path=self.path, key=f"{SECTION}.tasks")
        if self.spec.budget is None:
            raise EvomergeError("expected a budget, e.g. {evaluations: 64}", path=self.path, key=f"{SECTION}.budget")


def load_recipe(path: Union[str, Path], text: Optional[str] = None) -> Recipe:
    """Read and validate a recipe; `text` stands in for the file's content (a stored run's copy)."""
    from evomerge.recipe.stages import check_gene_stages, read_stages

    path = Path(path)
    text = read_text(path) if text is None else text
    documents = parse_yaml(text, path, documents=True)
    raw = documents[0] if len(documents) == 1 else None
    if not isinstance(raw, dict) and len(documents) == 1:
        raise EvomergeError("expected a mapping of mergekit keys at the top level", path=path)
    if raw is not None and "genome" in raw:  # a mergekit-evolve config: read as the recipe `evomerge convert` writes
        from evomerge.recipe.evolve_config import recipe_text

        return load_recipe(path, recipe_text(raw, path))
    section, stages = read_stages(documents, path)
    section = section or {}
    if isinstance(section, dict) and isinstance(section.get("genome"), dict):
        section = {**section, "genome": map_model_references(section["genome"], _resolver(path.parent))}
    spec = validated(EvomergeSpec, section, path, SECTION)
    _check_confirm(spec, path)
    check_gene_stages(spec, stages, path)
    return Recipe(path=path.resolve(), text=text, stages=stages, spec=spec)


def _self_reference(node: Any, key: str = "", inside: Tuple[int, ...] = ()) -> Optional[str]:
    """The key of the first value that contains itself, or None."""
    if not isinstance(node, (dict, list)):
        return None
    if id(node) in inside:
        return key or "(top level)"
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for name, value in items:
        found = _self_reference(value, f"{key}[{name}]" if isinstance(node, list) else f"{key}.{name}".lstrip("."),
                                inside + (id(node),))
        if found is not None:
            return found
    return None


def _check_confirm(spec: EvomergeSpec, path: Path) -> None:
    """Confirmation tasks are a third split: scoring finalists on what chose them, or on what the
    report shows, would confirm nothing."""
    if spec.confirm is None:
        return
    used = {t.name: "a search task" for t in spec.tasks} | {t: "a report task" for t in spec.report_tasks}
    for index, task in enumerate(spec.confirm.tasks):
        if task in used:
            raise EvomergeError(f"expected tasks the search and the report do not use, got {task!r}, {used[task]}",
                                path=path, key=f"{SECTION}.confirm.tasks[{index}]")


def read_text(path: Path) -> str:
    if not path.is_file():
        raise EvomergeError("recipe file not found", path=path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EvomergeError(f"expected a UTF-8 text file, found byte {error.object[error.start]:#04x} at "
                            f"position {error.start}", path=path) from None


def parse_yaml(text: str, path: Path, documents: bool = False) -> Any:
    """The YAML document (with `documents`, the list of them: `mergekit-multi`'s stages), or one line
    saying where it is malformed; an anchor used inside itself (a structure that contains itself) is
    refused too, as nothing downstream can walk it."""
    try:
        raw = ([d for d in yaml.safe_load_all(text) if d is not None] or [None]) if documents else yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = getattr(error, "position", None)  # a ReaderError: a character YAML does not allow
        where = f"line {mark.line + 1}" if mark else f"position {position}" if position is not None else None
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise EvomergeError(f"malformed YAML: {problem}", path=path, key=where) from None
    for index, document in enumerate(raw if documents else [raw]):
        if (loop := _self_reference(document)) is not None:
            where = f"documents[{index}].{loop}" if documents and len(raw) > 1 else loop
            raise EvomergeError("expected plain data, found an anchor used inside itself", path=path, key=where)
    return raw


def parse_merge_config(raw: Dict[str, Any], path: Path, stages: Sequence[str] = ()) -> MergeConfiguration:
    """mergekit's own MergeConfiguration, with errors that name the file and the key; model references
    that name one of `stages` (earlier merges of a multi-stage recipe) are left as they are."""
    known = set(MergeConfiguration.model_fields) | {SECTION}
    for key in raw:
        if key not in known:
            raise EvomergeError(f"unknown key{did_you_mean(str(key), known)}", path=path, key=str(key))
    entry_keys = set(InputModelDefinition.model_fields)  # mergekit ignores others: a misspelt `parameters` is lost
    models = raw.get("models")
    for index, entry in enumerate(models if isinstance(models, list) else []):
        for key in entry if isinstance(entry, dict) else ():
            if key not in entry_keys:
                raise EvomergeError(f"unknown key{did_you_mean(str(key), entry_keys)}", path=path,
                                    key=f"models[{index}].{key}")
    resolve = _resolver(path.parent)
    raw = map_model_references(raw, lambda reference: reference if stage_name(reference) in stages else resolve(reference))
    config = validated(MergeConfiguration, raw, path, None)
    for key in ("dtype", "out_dtype"):  # mergekit reads them only once it merges, after its progress bars
        try:
            dtype_from_name(getattr(config, key))
        except RuntimeError:
            raise EvomergeError(f"expected a dtype such as float32, bfloat16 or float16, got {getattr(config, key)!r}",
                                path=path, key=key) from None
    try:
        method = merge_methods.get(config.merge_method)
    except RuntimeError:
        names = [m.spec.name for m in merge_methods.registered_methods()]
        raise EvomergeError(
            f"unknown merge method {config.merge_method!r}{did_you_mean(config.merge_method, names)}; "
            f"expected one of {', '.join(sorted(names))}",
            path=path, key="merge_method",
        ) from None
    if config.models and config.base_model is None and method.spec.contract.base == BasePolicy.REQUIRED:
        # mergekit finds it out only once it merges, after its progress bars
        raise EvomergeError(f"the {config.merge_method} merge needs a base_model", path=path, key="base_model")
    return config


def map_model_references(node: Any, change: Callable[[str], str]) -> Any:
    """`change` applied to every model reference of a recipe or a genome (`models: [a, b]`)."""
    if isinstance(node, list):
        return [map_model_references(item, change) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: change(value) if key in MODEL_KEYS and isinstance(value, str)
        else [change(v) if isinstance(v, str) else map_model_references(v, change) for v in value]
        if key == "models" and isinstance(value, list)
        else map_model_references(value, change)
        for key, value in node.items()
    }


def stage_name(reference: str) -> str:
    """The part of a model reference mergekit-multi compares with its stage names: the path, without
    `@revision` or `+lora`."""
    return reference.split("+")[0].split("@")[0]


def _resolver(base: Path) -> Callable[[str], str]:
    """Make model paths that exist beside the recipe absolute; leave hub ids and others alone."""
    return lambda reference: resolve_model_path(reference, base)


def resolve_model_path(reference: str, base: Path) -> str:
    """`path[@revision][+lora[@revision]]` with each local path made absolute."""
    parts = []
    for part in reference.split("+"):
        location, _, revision = part.partition("@")
        candidate = base / location
        if location and not Path(location).is_absolute() and candidate.exists():
            location = str(candidate.resolve())
        parts.append(location + (f"@{revision}" if revision else ""))
    return "+".join(parts)
