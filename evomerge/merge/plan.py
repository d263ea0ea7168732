"""Planning a candidate with mergekit, and which of its tensors the resident model must recompute.

Each candidate is planned by mergekit's own `MergePlanner`, so gradients, filters and
parameter precedence are mergekit's. mergekit 0.1.5's `MergePlanner.plan_in_memory()` raises
`TypeError: Can't instantiate abstract class Task[Tensor]` (its `ReturnTensor` validates the
merge task against the abstract generic type). `plan_to_disk()` builds the same merge tasks
without touching the disk until executed, so the tasks are taken from there and its writer
is never run.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Tuple

import torch
from mergekit import merge_methods
from mergekit.architecture import ModelArchitecture
from mergekit.common import ImmutableMap
from mergekit.config import MergeConfiguration
from mergekit.graph import Task
from mergekit.io.tasks import SaveTensor
from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner
from mergekit.sparsify import SparsificationMethod
from pydantic import BaseModel

PlanEntry = Tuple[str, ExecuteMergeMethodTask, Optional[str]]  # tensor name, merge task, output dtype
Todo = Dict[ExecuteMergeMethodTask, Tuple[str, Optional[str], Hashable]]  # merge task -> name, dtype, signature


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


def _merge_key(task: ExecuteMergeMethodTask) -> Hashable:
    """What decides a tensor's merged value besides its inputs, which are fixed for a run's structure."""
    return tuple((f, task_key(getattr(task, f))) for f in type(task).model_fields if f != "gather_tensors")


def draws_random(method_name: str) -> bool:
    """Methods whose result depends on the random generator (DARE, DELLA, arcee_fusion's sampling)."""
    method = merge_methods.get(method_name)
    if isinstance(method, GeneralizedTaskArithmeticMerge):
        return method.sparsification_method in (SparsificationMethod.random, SparsificationMethod.della_magprune)
    return method_name == "arcee_fusion"


class Planner:
    """mergekit's planner for one output model's architecture and config."""

    def __init__(self, arch: ModelArchitecture, options: MergeOptions, out_config):
        self.arch, self.options, self.out_config = arch, options, out_config

    def tasks(self, merge: MergeConfiguration) -> List[Task]:
        planner = MergePlanner(merge.model_copy(deep=True), self.arch, self.options, self.out_config)
        return planner.plan_to_disk(out_path="<in memory: never written>")

    def entries(self, merge: MergeConfiguration) -> List[PlanEntry]:
        return plan_entries(self.tasks(merge))


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

    A tensor's signature is its merge task without the inputs, its output dtype and whatever
    else the caller adds (noise, seed). The inputs are the starting recipe's for the whole run.
    """

    def __init__(self, start: List[PlanEntry]):
        self._gathers = {name: task_key(task.gather_tensors) for name, task, _ in start}
        self._written: Dict[str, Hashable] = {}

    def todo(self, plan: List[PlanEntry], extra: Callable[[str], tuple], everything: bool) -> Todo:
        """The entries of `plan` whose signature differs from what was written (all of them if `everything`)."""
        todo: Todo = {}
        for name, task, dtype in plan:
            self._check_inputs(name, task)
            signature = (_merge_key(task), dtype) + extra(name)
            if everything or self._written.get(name) != signature:
                todo[task] = (name, dtype, signature)
        return todo

    def _check_inputs(self, name: str, task: ExecuteMergeMethodTask) -> None:
        """The parents' tensors are loaded once, for the starting recipe's structure; a candidate
        that reads other tensors (another layer range or model) would silently get the start's."""
        if self._gathers.get(name) != task_key(task.gather_tensors):
            raise ValueError(f"the candidate merges {name} from other tensors or models than the starting "
                             "recipe does; evomerge searches parameters, not which tensors are merged")

    def forget(self, names: Iterable[str]) -> None:
        """Before rewriting `names`: a failure halfway leaves them unknown, so they are recomputed."""
        for name in names:
            self._written.pop(name, None)

    def clear(self) -> None:
        self._written.clear()

    def wrote(self, todo: Todo) -> None:
        self._written.update({name: signature for name, _, signature in todo.values()})
