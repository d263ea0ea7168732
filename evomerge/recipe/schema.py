"""The `evomerge:` section's types: pydantic models, validated once when a recipe is loaded.

Pure data and its own checks; nothing here reads a file or knows the recipe around the section.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

from mergekit.evo.genome import METHOD_PARAM_MAPS, ModelGenomeDefinition
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

from evomerge.errors import TAG
from evomerge.recipe.route import RoutingEntry
from evomerge.recipe.track import TrackSpec, switchable
from evomerge.searchers.registry import RegisteredSearcher
from evomerge.searchers.spec import SearcherSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: Tuple[float, float]) -> Tuple[float, float]:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"expected [low, high], finite, with low < high, got [{low}, {high}]")
    return value


class GeneSpec(_Strict):
    """One searched mergekit parameter, split into genes per model, filter and layer group."""

    parameter: str = Field(description="The numeric parameter of the merge method to search, e.g. `weight`.")
    stage: Optional[str] = Field(None, description="The stage it belongs to (a multi-stage recipe's document name); "
                                                   "default: the final merge.")
    models: Optional[List[str]] = Field(None, description="The input models that get genes; "
                                                          "default: every input model other than `base_model`.")
    range: Tuple[float, float] = Field(description="The searched interval [low, high], finite, with low < high.")
    layer_groups: Union[int, List[Tuple[int, int]]] = Field(
        1, description="N values spread evenly over the layers (an N-point mergekit gradient), or contiguous layer "
                       "ranges [start, end) from layer 0, one gene each, as `evomerge tree --suggest-groups` "
                       "prints them.")
    filters: List[str] = Field(default_factory=list, description="Tensor-name filters that each get their own "
                                                                 "genes, plus a fallback for the other tensors; "
                                                                 "default: none.")

    _range = field_validator("range")(_check_range)

    @field_validator("layer_groups", mode="wrap",
                     json_schema_input_type=Union[PositiveInt, List[Tuple[NonNegativeInt, PositiveInt]]])
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

    range: Optional[Tuple[float, float]] = Field(None, description="The searched interval of the relative std "
                                                                   "[low, high], non-negative; default: not searched.")
    layer_groups: PositiveInt = Field(1, description="With `range`: searched values spread over the output model's "
                                                     "layers from first to last.")
    std: Optional[Union[float, List[float]]] = Field(
        None, description="The relative std applied (a value, or a mergekit gradient over the layers), or the "
                          "starting point when `range` is given; default: the middle of `range`.")

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
    """One lm-eval task of the fitness: the sum of weight × metric, signed by lm-eval's higher_is_better."""

    name: str = Field(description="The lm-eval task's name.")
    metric: str = Field("acc", description="The metric it contributes, named without its filter "
                                           "(e.g. `acc`, `exact_match`, `p_gold`, `gold_loglik`).")
    weight: float = Field(1.0, description="The metric's weight in the fitness sum.")


DTYPES = ("float32", "float16", "bfloat16")


class RacingSpec(_Strict):
    """Score each candidate in stages on growing shares of the search documents (one order,
    shuffled once per run) and stop one that cannot, with this confidence, beat the bar (the
    `rank`-th best fully scored candidate so far) by more than `margin` of the bar's standard errors."""

    stages: List[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0],
                                description="Growing shares of the search documents scored after one another, "
                                            "ending at 1.0.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="The chance, per candidate over all its stages, "
                                                                  "that one better than the bar is not stopped.")
    rank: PositiveInt = Field(1, description="The bar is the rank-th best fully scored candidate so far.")
    margin: NonNegativeFloat = Field(0.0, description="How far above the bar, in the bar's standard errors, "
                                                      "a candidate must be able to reach to go on.")

    @field_validator("stages")
    @classmethod
    def _growing_to_all(cls, stages: List[float]) -> List[float]:
        if not stages or stages[-1] != 1.0 or any(not 0 <= a < b for a, b in zip([0.0] + stages, stages)):
            raise ValueError(f"expected growing shares of the documents ending at 1.0, e.g. [0.25, 0.5, 1.0], got {stages}")
        return stages


class EvalSpec(_Strict):
    """How candidates are scored: lm-eval's own options, as `lm_eval --help` names them."""

    batch_size: Union[PositiveInt, Literal["auto"], None] = Field(
        None, description="A number, or `auto` for lm-eval's own search; default: auto on CUDA, 64 elsewhere "
                          "(device_defaults.py). Out of memory at a fixed size halves it and retries.")
    limit: Optional[PositiveInt] = Field(None, description="Documents scored per task; default: all of them.")
    num_fewshot: Optional[NonNegativeInt] = Field(None, description="Few-shot examples; default: each task's own.")
    apply_chat_template: Union[bool, str] = Field(False, description="`true`: the tokenizer's chat template; "
                                                                     "a string names one.")
    fewshot_as_multiturn: bool = Field(False, description="Few-shot examples as chat turns; needs "
                                                          "`apply_chat_template`.")
    system_instruction: Optional[str] = Field(None, description="A system instruction put before every prompt.")
    gen_kwargs: Dict[str, Any] = Field(default_factory=dict, description="Generation arguments for `generate_until` "
                                                                         "tasks, over each task's own.")
    max_length: Optional[PositiveInt] = Field(None, description="The model's maximum length in tokens; "
                                                                "default: lm-eval's.")
    dtype: Optional[str] = Field(None, description="The dtype candidates are scored in; default: the recipe's "
                                                   "`out_dtype` or `dtype` (device_defaults.scoring_dtype).")
    racing: switchable(RacingSpec) = Field(None, description="Score candidates in stages and stop the hopeless ones "
                                                            "early (`true`: the defaults); default: off.")

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


_GENOME_KEYS = {  # mergekit's own genome fields carry no description; the schema gives them these
    "models": "The models the genome merges, one set of genes each.",
    "merge_method": f"mergekit-evolve's merge method: one of {', '.join(METHOD_PARAM_MAPS)}.",
    "base_model": "The base model; ties, dare_ties and task_arithmetic need one.",
    "tokenizer_source": "mergekit's `tokenizer_source` for the merged model.",
    "layer_granularity": "Layers per layer group, each with its own genes; 0: one group for all layers.",
    "normalize": "mergekit's `normalize`; default: on for ties, dare_ties and linear.",
    "allow_negative_weights": "Let weights (and slerp's t) be negative; otherwise their absolute values are used.",
    "filters": "Tensor-name filters that each get their own genes, plus one set for the rest; not with slerp.",
    "smooth": "The layer groups' values as one mergekit gradient instead of a slice per group; not with slerp.",
}


def _describe_genome_keys(schema: Dict[str, Any]) -> None:
    for key, description in _GENOME_KEYS.items():
        schema["properties"][key].setdefault("description", description)


class GenomeSpec(ModelGenomeDefinition):
    """mergekit-evolve's genome (its own type and checks), searched as mergekit-evolve searches it:
    its genotype layout, decoded by its own `genotype_merge_config` (see genome.GenomeSpace).

    mergekit-evolve's CMA-ES is unbounded; evomerge's searchers need a box, so each genotype
    parameter gets a range (default [0, 1]; weights [-1, 1] with `allow_negative_weights`).
    `random_init` starts at a uniform draw from [0, 1) (mergekit-evolve's), seeded by the run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_describe_genome_keys)
    random_init: bool = Field(False, description="Start at a uniform draw from [0, 1) (mergekit-evolve's), "
                                                 "seeded by the run.")
    ranges: Dict[str, Tuple[float, float]] = Field(default_factory=dict, description="A range per genotype parameter; "
                                                   "default: [0, 1], weights [-1, 1] with `allow_negative_weights`.")

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
    """When the search stops: after its evaluations, or after too many failed candidates."""

    evaluations: PositiveInt = Field(description="The candidates the search evaluates.")
    max_failures: Optional[PositiveInt] = Field(None, description="Failed candidates a run may have; "
                                                                  "default: no limit.")
    max_consecutive_failures: Optional[PositiveInt] = Field(
        None, description="Failed candidates in a row that stop the run; default: a generation, at least 5 "
                          "(run/failures.py).")


class ConfirmSpec(_Strict):
    """Before crowning: the search's best is the best of many tries on the search documents, so its
    lead there is partly luck. The `top` candidates the search estimates best are scored again, with
    the start, on documents that never chose them: these `tasks`, or else a seeded `hold_back` share of
    the search tasks' documents, which the search never scores. The best of them replaces the start
    only if it beats the start there, paired on the same documents, beyond the noise."""

    top: PositiveInt = Field(4, description="How many candidates are scored again: the best by `rank`.")
    tasks: List[str] = Field(default_factory=list, description="lm-eval tasks held out of the search and the "
                                                               "report; default: documents held back instead.")
    hold_back: float = Field(0.25, gt=0, lt=1, description="Without `tasks`: the share of each search task's "
                                                           "documents held back (seeded by `seed`).")
    rank: Literal["surrogate", "score"] = Field(
        "surrogate", description="How the `top` are chosen: `surrogate`, a Gaussian process with a noise term "
                                 "over every fully scored candidate; `score`, their search fitness.")
    z: float = Field(2.0, gt=0, description="Standard errors a candidate must beat the start by, paired on the "
                                            "confirmation documents; raised for the `top` compared (Bonferroni).")


def _entry_kind(entry: Any) -> str:
    routing = isinstance(entry, RoutingEntry) or isinstance(entry, dict) and "routing" in entry
    return TAG + ("routing" if routing else "gene")


SearchEntry = Annotated[Union[Annotated[GeneSpec, Tag(TAG + "gene")], Annotated[RoutingEntry, Tag(TAG + "routing")]],
                        Discriminator(_entry_kind)]  # a parameter's genes, or a layer route's (route.py)


class EvomergeSpec(_Strict):
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds the search; also mergekit's --random-seed, "
                                                           "which numpy bounds.")
    search: List[SearchEntry] = Field(default_factory=list, description="The genes: each entry a parameter's "
                                                                        "(`parameter: ...`) or a layer route's "
                                                                        "(`routing: ...`).")
    genome: Optional[GenomeSpec] = Field(None, description="A mergekit-evolve genome, the whole search space "
                                                           "instead of `search` and `noise`.")
    noise: Optional[NoiseSpec] = Field(None, description="Weight-space mutation: Gaussian noise relative to each "
                                                         "merged tensor's std; default: none.")
    tasks: List[TaskSpec] = Field(default_factory=list, description="The lm-eval tasks of the fitness, "
                                                                    "the sum of weight × metric.")
    fitness: Optional[str] = Field(None, description="`module:function`, a Python function of (model, tokenizer) "
                                                     "returning a float or a dict of floats, looked up beside the "
                                                     "recipe first; it may be the whole fitness, with no `tasks`.")
    objectives: Literal["sum", "separate"] = Field("sum", description="`sum`: one fitness; `separate`: one objective "
                                                                      "per task, for a multi-objective searcher.")
    report_tasks: List[str] = Field(default_factory=list, description="lm-eval tasks the winner is scored on for the "
                                                                      "report, which the search never saw.")
    task_paths: List[str] = Field(default_factory=list, description="lm-eval include paths, relative to the recipe.")
    searcher: RegisteredSearcher = Field(default_factory=SearcherSpec, description="The searcher, by `name`, "
                                                                                    "with its own options; "
                                                                                    "default: cma.")
    budget: Optional[BudgetSpec] = Field(None, description="When the search stops; `evomerge search` needs one.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="How candidates are scored: lm-eval's own options.")
    parents: Literal["device", "host"] = Field("device", description="Where the parents' tensors stay: on the "
                                                                     "device, or in host memory, reaching the "
                                                                     "device one tensor ahead of their merge.")
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec, description="Crowning: the best candidates are "
                                                                          "scored again, with the start, on "
                                                                          "documents that did not select them.")
    track: TrackSpec = Field(default_factory=TrackSpec, description="Experiment trackers the search logs to; "
                                                                    "default: none.")

    @model_validator(mode="after")
    def _genome_alone(self) -> "EvomergeSpec":
        if self.genome is not None and (self.search or self.noise is not None):
            raise ValueError("a genome is the whole search space; remove `search` and `noise` (or the genome)")
        return self

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_always(cls, value: Any) -> Any:
        """`confirm: null` (once: no confirmation) is the defaults: the crown always checks the start."""
        return {} if value is None else value

    @field_validator("fitness")
    @classmethod
    def _module_function(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError(f"expected 'module:function', got {value!r}")
        return value
