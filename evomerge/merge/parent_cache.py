"""The parents' tensors, loaded once by mergekit's own loading tasks and kept resident."""

from __future__ import annotations

from typing import Dict, Hashable, List

import torch
from mergekit.common import ModelReference
from mergekit.graph import Executor

from evomerge.merge.plan import PlanEntry, task_key

Inputs = Dict[ModelReference, torch.Tensor]


class ParentCache:
    """`device` is where the merges run; `storage` where the parents stay (the device, or the host)."""

    def __init__(self, plan: List[PlanEntry], device: torch.device, storage: torch.device, quiet: bool = False):
        self._gather_of = {name: task_key(task.gather_tensors) for name, task, _ in plan}
        gathers = list({task_key(task.gather_tensors): task.gather_tensors for _, task, _ in plan}.values())
        executor = Executor(gathers, math_device=device, storage_device=storage)
        self._inputs: Dict[Hashable, Inputs] = {
            task_key(task): value for task, value in executor.run(quiet=quiet, desc="Loading parents")}

    def inputs(self, name: str) -> Inputs:
        """The resident inputs of tensor `name`, as stored (mergekit's Executor takes them as a cached value)."""
        return self._inputs[self._gather_of[name]]

    def supplies(self, reference: ModelReference) -> bool:
        return all(reference in inputs for inputs in self._inputs.values())

    def tensor(self, name: str, reference: ModelReference) -> torch.Tensor:
        """One parent's input to tensor `name` as mergekit's loader gives it (in the recipe's dtype)."""
        return self._inputs[self._gather_of[name]][reference]
