"""Planning once per run with mergekit, resolving each candidate's parameters, and which of its
tensors the resident model must recompute.

The run's recipe is planned once by mergekit's own `MergePlanner`; what it records of each
tensor (its merge task, its place in the recipe, its gradient position) is the run's
`Schedule`. A candidate then differs only in its parameter values: mergekit's own
`resolve_parameters` resolves them per tensor at the place the planner read them, so
gradients, filters and precedence stay mergekit's, without rebuilding every task. A candidate
whose recipe differs in anything but parameters is planned anew (a shape change).

mergekit 0.1.5's `MergePlanner.plan_in_memory()` raises `TypeError: Can't instantiate abstract
class Task[Tensor]` (its `ReturnTensor` validates the merge task against the abstract generic
type). `plan_to_disk()` builds the same merge tasks without touching the disk until executed,
so the tasks are taken from there and its writer is never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Tuple

import torch
from mergekit import merge_methods
from mergekit.architecture import ModelArchitecture
from mergekit.common import ImmutableMap, ModelReference
from mergekit.config import ConfigReader, MergeConfiguration
from mergekit.graph import Task, TaskUniverse, build_schedule
from mergekit.io.tasks import SaveTensor
from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.parameter_resolver import resolve_parameters
from mergekit.plan import MergePlanner
from mergekit.sparsify import SparsificationMethod
from pydantic import BaseModel

PlanEntry = Tuple[str, ExecuteMergeMethodTask, Optional[str]]  # tensor name, merge task, output dtype


def task_key(value: Any) -> Hashable:
    """A structural key for a mergekit task.

    mergekit's tasks hold `ImmutableMap`s, which compare by identity, so two plans of
    the same recipe give tasks that are never equal; this key compares their contents.
    """
    if isinstance(value, BaseModel):
        return (type(value).__name__,) + tuple((f, task_key(getattr(value, f))) for f in type(value).model_fields)
    if isinstance(value, (ImmutableMap, Mapping)):
        return tuple(sorted(((task_key(k), task_key(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (list, tuple)):
        return tuple(task_key(v) for v in value)
    return value


def draws_random(method_name: str) -> bool:
    """Methods whose result depends on the random generator (DARE, DELLA, arcee_fusion's sampling)."""
    method = merge_methods.get(method_name)
    if isinstance(method, GeneralizedTaskArithmeticMerge):
        return method.sparsification_method in (SparsificationMethod.random, SparsificationMethod.della_magprune)
    return method_name == "arcee_fusion"


@dataclass(frozen=True)
class Place:
    """Where mergekit's planner reads one tensor's parameters: the output module, its output
    slice, the gradient position t and each input model's own name for the tensor."""

    module: str
    slice: int
    t: float
    inputs: Tuple[Tuple[ModelReference, str], ...]


@dataclass(frozen=True)
class Slot:
    """One output tensor of the run: its merge task as planned for the starting recipe, its
    output dtype and its place."""

    name: str
    task: ExecuteMergeMethodTask
    dtype: Optional[str]
    place: Place


Parameters = Tuple[Dict[str, Any], Dict[ModelReference, Dict[str, Any]]]  # shared, per input


class _RecordingPlanner(MergePlanner):
    """mergekit's planner, noting each tensor's place as it plans it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.places: Dict[str, Place] = {}

    def plan_tensor(self, weight, weights_in, models, cfg_reader: ConfigReader):
        super().plan_tensor(weight, weights_in, models, cfg_reader)
        module = next(name for name, m in self.config.modules.items() if m is cfg_reader.module)
        index = next(i for i, s in enumerate(cfg_reader.module.slices) if s is cfg_reader.slice_out)
        self.places[weight.name] = Place(module, index, cfg_reader.t,
                                         tuple((m, w.name) for m, w in zip(models, weights_in)))


def structure(config: MergeConfiguration) -> Hashable:
    """A normalized recipe without its parameter values: what a candidate may not change
    without being planned anew."""
    def strip(value):
        if isinstance(value, dict):
            return tuple((k, strip(v)) for k, v in value.items() if k != "parameters")
        if isinstance(value, list):
            return tuple(strip(v) for v in value)
        return value
    return strip(config.model_dump(mode="json"))


class Planner:
    """mergekit's planner for one output model's architecture and config."""

    def __init__(self, arch: ModelArchitecture, options: MergeOptions, out_config):
        self.arch, self.options, self.out_config = arch, options, out_config

    def tasks(self, merge: MergeConfiguration) -> List[Task]:
        planner = MergePlanner(merge.model_copy(deep=True), self.arch, self.options, self.out_config)
        return planner.plan_to_disk(out_path="<in memory: never written>")

    def entries(self, merge: MergeConfiguration) -> List[PlanEntry]:
        return plan_entries(self.tasks(merge))

    def schedule(self, merge: MergeConfiguration) -> "Schedule":
        """Plan `merge` with mergekit, once for every candidate of the same structure."""
        planner = _RecordingPlanner(merge.model_copy(deep=True), self.arch, self.options, self.out_config)
        tasks = planner.plan_to_disk(out_path="<in memory: never written>")
        slots = [Slot(name, task, dtype, planner.places[name]) for name, task, dtype in plan_entries(tasks)]
        return Schedule(self, planner.config, slots, tasks)

    def normalized(self, merge: MergeConfiguration) -> MergeConfiguration:
        """The recipe as mergekit's planner reads it (`models:` and `slices:` as modules of slices)."""
        planner = MergePlanner(merge.model_copy(deep=True), self.arch, self.options, self.out_config)
        planner.normalize_config()
        return planner.config


class Schedule:
    """The run's plan: every output tensor's slot, in the order mergekit's Executor runs their
    merge tasks (randomized methods draw in that order), and each candidate's parameters
    resolved per tensor by mergekit's own resolver."""

    def __init__(self, planner: Planner, normalized: MergeConfiguration, slots: List[Slot], tasks: List[Task]):
        self._planner = planner
        self.tasks = tasks  # everything mergekit planned (the tokenizer's task too)
        self.structure = structure(normalized)
        self.slots = _in_execution_order(slots, tasks)
        self.method = slots[0].task.method_name if slots else None
        self.spec = merge_methods.get(self.method).spec if slots else None

    def entries(self) -> List[PlanEntry]:
        return [(slot.name, slot.task, slot.dtype) for slot in self.slots]

    def resolve(self, merge: MergeConfiguration) -> Optional[Dict[str, Parameters]]:
        """Each tensor's (shared, per-input) parameters for `merge`, as mergekit's planner resolves
        them; None if `merge` differs from the run's recipe in more than parameter values."""
        config = self._planner.normalized(merge)
        if structure(config) != self.structure:
            return None
        readers: Dict[Tuple[str, int], Tuple[ConfigReader, Callable]] = {}
        resolved = {}
        for slot in self.slots:
            place = slot.place
            key = (place.module, place.slice)
            if key not in readers:
                module = config.modules[place.module]
                reader = ConfigReader(config=config, slice_out=module.slices[place.slice], module=module, t=0)
                readers[key] = reader, _memoized(reader.parameter_sources)
            reader, sources = readers[key]
            resolved[slot.name] = resolve_parameters(self.spec, tensor_name=slot.name, inputs=dict(place.inputs),
                                                     sources=sources, base_model=reader.base_model, t=place.t)
        return resolved


def _memoized(sources: Callable[[Optional[ModelReference]], Iterable]) -> Callable[[Optional[ModelReference]], tuple]:
    """A place's `parameter_sources` read once per model: the same for every tensor of the place
    (and comparing mergekit's model references is slow)."""
    seen: Dict[Optional[ModelReference], tuple] = {}

    def read(model: Optional[ModelReference] = None) -> tuple:
        if model not in seen:
            seen[model] = tuple(sources(model))
        return seen[model]
    return read


def task_with(slot: Slot, parameters: Parameters) -> ExecuteMergeMethodTask:
    """The slot's merge task with a candidate's parameters (the planner's task, values replaced)."""
    shared, per_input = parameters
    return slot.task.model_copy(update={
        "parameters": ImmutableMap(data=shared),
        "input_parameters": ImmutableMap(data={m: ImmutableMap(data=p) for m, p in per_input.items()})})


def _in_execution_order(slots: List[Slot], tasks: List[Task]) -> List[Slot]:
    """The merge tasks in the order mergekit's Executor runs them for `mergekit-yaml`: its schedule
    over everything planned, loading and the tokenizer's tasks included (a merge task that waits for
    the merged tokenizer, as embeddings do with `tokenizer_source`, runs later than its place among
    the merge tasks alone; the order depends on the recipe's structure only)."""
    universe = TaskUniverse()
    targets = [universe.add_task(task) for task in tasks]
    by_handle = {universe.add_task(slot.task): slot for slot in slots}
    return [by_handle[h] for h in build_schedule(targets, {}).tasks if h in by_handle]


def signature(parameters: Parameters) -> Hashable:
    shared, per_input = parameters
    return tuple(shared.items()), tuple((m, tuple(p.items())) for m, p in per_input.items())


def plan_entries(tasks: Iterable[Task]) -> List[PlanEntry]:
    return [(t.tensor_name, t.tensor_task, t.dtype) for t in tasks if isinstance(t, SaveTensor)]


def check_coverage(plan: List[PlanEntry], model: torch.nn.Module) -> None:
    """Every parameter of the output model is merged, and nothing else is."""
    planned = {name for name, _, _ in plan}
    missing = [name for name, _ in model.named_parameters() if name not in planned]
    unknown = sorted(planned - set(model.state_dict()))
    if missing or unknown:
        raise ValueError(
            f"the merge plan and the output model disagree: not merged {missing[:5]}, not in the model {unknown[:5]}"
        )


class Ledger:
    """What the resident model holds, tensor by tensor, so a candidate recomputes only what changed.

    A tensor's signature is its resolved parameters and whatever else the caller adds (output
    dtype, noise, seed); the merge task's other fields are the schedule's, the same for every
    candidate of it (a new schedule clears the ledger).
    """

    def __init__(self):
        self._written: Dict[str, Hashable] = {}

    def todo(self, signatures: Mapping[str, Hashable], everything: bool) -> Dict[str, Hashable]:
        """The names whose signature differs from what was written (all of them if `everything`),
        in `signatures`' order."""
        return {name: s for name, s in signatures.items() if everything or self._written.get(name) != s}

    def forget(self, names: Iterable[str]) -> None:
        """Before rewriting `names`: a failure halfway leaves them unknown, so they are recomputed."""
        for name in names:
            self._written.pop(name, None)

    def clear(self) -> None:
        self._written.clear()

    def wrote(self, signatures: Mapping[str, Hashable]) -> None:
        self._written.update(signatures)
