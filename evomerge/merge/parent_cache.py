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

from typing import Collection, Dict, Hashable, List, Mapping, Optional, Tuple

import torch
from mergekit.common import ImmutableMap, ModelReference, dtype_from_name
from mergekit.graph import Executor
from mergekit.io.tasks import GatherTensors, LoaderCache
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.mergekit_tasks import PlanEntry, task_key

Inputs = Dict[ModelReference, torch.Tensor]


def _loads_native(gather) -> bool:
    """Whether these inputs can be kept in their checkpoint dtype (see the module's docstring)."""
    return (isinstance(gather, GatherTensors) and gather.dtype is not None
            and not any(info.force_dtype for info in gather.weight_info.values()))


def _narrowed(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    """Cast at load, as mergekit's loader does, what is wider than `dtype` or not floating point."""
    return {model: tensor if tensor.is_floating_point() and tensor.itemsize <= dtype.itemsize
            else tensor.to(dtype=dtype) for model, tensor in inputs.items()}


def _without(gather, produced: Collection[ModelReference]):
    """The gather of what must be loaded from disk: the parents no earlier stage produces."""
    if not isinstance(gather, GatherTensors) or not any(model in produced for model in gather.weight_info):
        return gather
    kept = {model: info for model, info in gather.weight_info.items() if model not in produced}
    return gather.model_copy(update={"weight_info": ImmutableMap(kept)})


def _produced_inputs(gather, produced: Mapping[ModelReference, Mapping[str, torch.Tensor]],
                     cast: Optional[str]) -> Dict[ModelReference, Tuple[Mapping[str, torch.Tensor], str, Optional[str]]]:
    """model -> (its resident tensors, the name read, the dtype to cast to) for each produced input,
    resolved as mergekit's LoadTensor resolves a name in a folder (the name, its aliases, its tied names)."""
    if not produced:
        return {}
    if not isinstance(gather, GatherTensors):  # e.g. mergekit's vocabulary alignment for a merged tokenizer
        if any(model in produced for model in getattr(getattr(gather, "gather_tensors", None), "weight_info", ())):
            raise ValueError("a merged tokenizer (tokenizer_source) over an earlier stage's output is not supported")
        return {}
    found = {}
    for model, info in gather.weight_info.items():
        if model not in produced:
            continue
        tensors = produced[model]
        name = next((n for n in (info.name, *(info.aliases or ()), *(info.tied_names or ())) if n in tensors), None)
        if name is None:
            if info.optional:
                continue
            raise ValueError(f"tensor {info.name} required but not present in the earlier stage {model}")
        found[model] = (tensors, name, None if cast else info.force_dtype or gather.dtype)
    return found


def _read(tensors: Mapping[str, torch.Tensor], name: str, dtype: Optional[str]) -> torch.Tensor:
    """An earlier stage's resident tensor as mergekit's loader gives it (cast to `dtype` if set)."""
    tensor = tensors[name].detach()
    return tensor.to(dtype=dtype_from_name(dtype)) if dtype else tensor


def pins(device: torch.device, storage: torch.device) -> bool:
    """Parents kept on the host for a CUDA device are pinned: mergekit moves each tensor's inputs with
    `non_blocking=True`, which from page-locked memory is a real asynchronous copy at full bus speed,
    so the host queues the next tensor's inputs while the device merges (from pageable memory the
    copy is staged and waits)."""
    return storage.type == "cpu" and device.type == "cuda"


class ParentCache:
    """`device` is where the merges run; `storage` where the parents stay (the device, or the host).

    `produced`: parents that are an earlier stage's resident output (tensor name -> tensor, as
    mergekit writes that stage), read where they are instead of loaded.
    """

    def __init__(self, plan: List[PlanEntry], device: torch.device, storage: torch.device, quiet: bool = False,
                 produced: Mapping[ModelReference, Mapping[str, torch.Tensor]] = {}):
        self._gather_of = {name: task_key(task.gather_tensors) for name, task, _ in plan}
        gathers = {task_key(task.gather_tensors): task.gather_tensors for _, task, _ in plan}
        self._cast: Dict[Hashable, Optional[str]] = {  # the recipe's dtype, where the merge casts to it
            key: gather.dtype if _loads_native(gather) else None for key, gather in gathers.items()}
        self._order = {key: list(getattr(gather, "weight_info", ())) for key, gather in gathers.items()}
        self._produced = {key: _produced_inputs(gather, produced, self._cast[key]) for key, gather in gathers.items()}
        stripped = {key: _without(gather, produced) for key, gather in gathers.items()}
        self._inputs: Dict[Hashable, Inputs] = {  # all produced by earlier stages: nothing to load
            key: {} for key, gather in stripped.items() if isinstance(gather, GatherTensors) and not gather.weight_info}
        loading = {key: gather.model_copy(update={"dtype": None}) if self._cast[key] else gather
                   for key, gather in stripped.items() if key not in self._inputs}
        keys = {task_key(task): key for key, task in loading.items()}
        executor = Executor(list(loading.values()), math_device=device, storage_device=storage)
        pin = pins(device, storage)
        for task, value in executor.run(quiet=quiet, desc="Loading parents"):
            key = keys[task_key(task)]
            value = _narrowed(value, dtype_from_name(self._cast[key])) if self._cast[key] else value
            self._inputs[key] = {model: tensor.pin_memory() for model, tensor in value.items()} if pin else value
        LoaderCache().flush_all()  # mergekit's loaders are one process-wide cache: a later load reads the files anew

    def inputs(self, name: str) -> Inputs:
        """The resident inputs of tensor `name`, as stored (mergekit's Executor takes them as a cached value)."""
        key = self._gather_of[name]
        if not self._produced[key]:
            return self._inputs[key]
        stored, produced = self._inputs[key], self._produced[key]
        return {model: stored[model] if model in stored else _read(*produced[model])
                for model in self._order[key] if model in stored or model in produced}

    def readers(self, reference: ModelReference, names: Collection[str]) -> List[str]:
        """This merge's tensors that read any of `names` of an earlier stage's output `reference`."""
        return [name for name, key in self._gather_of.items()
                if reference in self._produced[key] and self._produced[key][reference][1] in names]

    def merge_task(self, name: str, task: ExecuteMergeMethodTask) -> ExecuteMergeMethodTask:
        """The merge task as it must run over the resident inputs: casting them to the recipe's dtype."""
        dtype = self._cast[self._gather_of[name]]
        return task.model_copy(update={"dtype": dtype}) if dtype else task

    def holds(self, name: str, task: ExecuteMergeMethodTask) -> bool:
        """Whether the inputs kept for tensor `name` are the ones `task` reads."""
        return self._gather_of.get(name) == task_key(task.gather_tensors)

    def supplies(self, reference: ModelReference) -> bool:
        return all(reference in inputs for inputs in self._inputs.values())

    def tensor(self, name: str, reference: ModelReference) -> torch.Tensor:
        """One parent's input to tensor `name` as mergekit's loader gives it (in the recipe's dtype)."""
        gather = self._gather_of[name]
        tensor, dtype = self._inputs[gather][reference], self._cast[gather]
        return tensor.to(dtype=dtype_from_name(dtype)) if dtype else tensor
