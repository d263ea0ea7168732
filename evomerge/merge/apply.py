"""Applying a plan: mergekit's Executor runs the changed merge tasks over the resident parents,
and each result is cast, given evomerge's noise and copied in place into the resident model.

Nothing here waits for the device per tensor: whether every written value is finite is
accumulated on the device and read once, after the last tensor.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import transformers
from mergekit.common import dtype_from_name
from mergekit.graph import Executor, TaskUniverse
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.noise import add_noise
from evomerge.merge.parent_cache import ParentCache
from evomerge.merge.plan import Todo
from evomerge.random_state import preserved_random_state


def apply(todo: Todo, parents: ParentCache, parameters: Mapping[str, torch.Tensor], device: torch.device,
          seed: int, noise_scale: Callable[[str], float]) -> None:
    """Merge and write every tensor of `todo` into `parameters` (the resident model's, by name).

    Raises if a merge task gives no tensor (the resident one would silently stay the previous
    candidate's) or if any written value is not finite (after writing them all).
    """
    tasks: Dict[ExecuteMergeMethodTask, Tuple[str, Optional[str]]] = {
        parents.merge_task(name, task): (name, dtype) for task, (name, dtype, _) in todo.items()}
    universe = TaskUniverse()
    targets = [universe.add_task(task) for task in tasks]
    cached = {universe.get_handle(task.gather_tensors): parents.inputs(name) for task, (name, _) in tasks.items()}
    executor = Executor(targets, math_device=device, storage_device=device, cached_values=cached)
    finite = torch.ones((), dtype=torch.bool, device=device)
    with preserved_random_state(device), torch.no_grad():
        transformers.trainer_utils.set_seed(seed)  # as `mergekit-yaml --random-seed`
        for task, value in executor.run(quiet=True):
            name, dtype = tasks[task]
            if value is None:
                raise ValueError(f"mergekit's {task.method_name} merge gave no tensor for {name}, "
                                 "which the output model needs")
            if dtype:
                value = value.to(dtype=dtype_from_name(dtype))
            value = add_noise(value, name, noise_scale(name), seed)
            if value.is_floating_point():
                finite &= torch.isfinite(value).all()
            parameters[name].copy_(value)
    if not finite.item():  # the candidate's one wait for the device
        bad = next(name for name, _ in tasks.values()
                   if parameters[name].is_floating_point() and not torch.isfinite(parameters[name]).all())
        raise FloatingPointError(f"the merge gave non-finite weights in {bad}")
