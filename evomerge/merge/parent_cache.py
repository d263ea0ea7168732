"""The parents' tensors, loaded once by mergekit's own loading tasks and kept resident.

They stay in their checkpoint dtype (e.g. bfloat16) and are cast to the recipe's `dtype:`
per tensor inside the merge: mergekit's `LoadTensor` casts each tensor with `.to(dtype)`
as it loads it, and the merge task's own `dtype` field makes mergekit's merge methods do
that same cast on the inputs of the tensor being merged (`align_dtype`, `prepare_batches`),
so the merged bits are mergekit's. Cast at load instead, as mergekit does: tensors wider
than the recipe's dtype (keeping them would only cost memory) or not floating point; weights
the architecture forces to a dtype (mergekit promotes those with the rest); and inputs whose
vocabulary mergekit re-aligns for a merged tokenizer, which averages new tokens' embeddings
in the loaded dtype.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Optional

import torch
from mergekit.common import ModelReference, dtype_from_name
from mergekit.graph import Executor
from mergekit.io.tasks import GatherTensors, LoaderCache
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.plan import PlanEntry, task_key

Inputs = Dict[ModelReference, torch.Tensor]


def _loads_native(gather) -> bool:
    """Whether these inputs can be kept in their checkpoint dtype (see the module's docstring)."""
    return (isinstance(gather, GatherTensors) and gather.dtype is not None
            and not any(info.force_dtype for info in gather.weight_info.values()))


def _narrowed(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    """Cast at load, as mergekit's loader does, what is wider than `dtype` or not floating point."""
    return {model: tensor if tensor.is_floating_point() and tensor.itemsize <= dtype.itemsize
            else tensor.to(dtype=dtype) for model, tensor in inputs.items()}


def pins(device: torch.device, storage: torch.device) -> bool:
    """Parents kept on the host for a CUDA device are pinned: mergekit moves each tensor's inputs with
    `non_blocking=True`, which from page-locked memory is a real asynchronous copy at full bus speed,
    so the host queues the next tensor's inputs while the device merges (from pageable memory the
    copy is staged and waits)."""
    return storage.type == "cpu" and device.type == "cuda"


class ParentCache:
    """`device` is where the merges run; `storage` where the parents stay (the device, or the host)."""

    def __init__(self, plan: List[PlanEntry], device: torch.device, storage: torch.device, quiet: bool = False):
        self._gather_of = {name: task_key(task.gather_tensors) for name, task, _ in plan}
        gathers = {task_key(task.gather_tensors): task.gather_tensors for _, task, _ in plan}
        self._cast: Dict[Hashable, Optional[str]] = {  # the recipe's dtype, where the merge casts to it
            key: gather.dtype if _loads_native(gather) else None for key, gather in gathers.items()}
        loading = {key: gather.model_copy(update={"dtype": None}) if self._cast[key] else gather
                   for key, gather in gathers.items()}
        keys = {task_key(task): key for key, task in loading.items()}
        executor = Executor(list(loading.values()), math_device=device, storage_device=storage)
        pin = pins(device, storage)
        self._inputs: Dict[Hashable, Inputs] = {}
        for task, value in executor.run(quiet=quiet, desc="Loading parents"):
            key = keys[task_key(task)]
            value = _narrowed(value, dtype_from_name(self._cast[key])) if self._cast[key] else value
            self._inputs[key] = {model: tensor.pin_memory() for model, tensor in value.items()} if pin else value
        LoaderCache().flush_all()  # mergekit's loaders are one process-wide cache: a later load reads the files anew

    def inputs(self, name: str) -> Inputs:
        """The resident inputs of tensor `name`, as stored (mergekit's Executor takes them as a cached value)."""
        return self._inputs[self._gather_of[name]]

    def merge_task(self, name: str, task: ExecuteMergeMethodTask) -> ExecuteMergeMethodTask:
        """The merge task as it must run over the resident inputs: casting them to the recipe's dtype."""
        dtype = self._cast[self._gather_of[name]]
        return task.model_copy(update={"dtype": dtype}) if dtype else task

    def supplies(self, reference: ModelReference) -> bool:
        return all(reference in inputs for inputs in self._inputs.values())

    def tensor(self, name: str, reference: ModelReference) -> torch.Tensor:
        """One parent's input to tensor `name` as mergekit's loader gives it (in the recipe's dtype)."""
        gather = self._gather_of[name]
        tensor, dtype = self._inputs[gather][reference], self._cast[gather]
        return tensor.to(dtype=dtype_from_name(dtype)) if dtype else tensor
