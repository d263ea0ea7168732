"""Applying a candidate: mergekit's merge task of each changed tensor run directly over the
resident parents, in the schedule's order, and each result cast, given evomerge's noise and
copied in place into the resident model.

Each task runs as mergekit's Executor would run it (inputs moved to the merge device when the
method asks for it, the result kept there), without building a task graph per candidate.
Nothing here waits for the device per tensor: whether every written value is finite is
accumulated on the device and read once, after the last tensor. Parents kept on the host
(`parents: host`) reach the device one tensor ahead of their merge (prefetch.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Optional, Sequence

import torch
import transformers
from mergekit.common import dtype_from_name
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.kernels import Scratch, finite_probe, kernel_for
from evomerge.merge.noise import add_noise
from evomerge.merge.parent_cache import Inputs
from evomerge.merge.prefetch import prefetched
from evomerge.random_state import preserved_random_state


@dataclass(frozen=True)
class Work:
    """One tensor to write: mergekit's merge task with the candidate's parameters, its inputs
    as the parent cache keeps them, the output dtype and the noise scale."""

    name: str
    task: ExecuteMergeMethodTask
    inputs: Inputs
    dtype: Optional[str]
    noise: float


def apply(work: Sequence[Work], parameters: Mapping[str, torch.Tensor], device: torch.device, seed: int,
          scratch: Scratch, pool: Optional[ThreadPoolExecutor] = None) -> None:
    """Merge and write every tensor of `work` into `parameters` (the resident model's, by name):
    in order, or on `pool`'s threads (only for methods that draw no random numbers: a
    randomized method's draws must follow mergekit's order).

    Raises if a merge task gives no tensor (the resident one would silently stay the previous
    candidate's) or if any written value is not finite (after writing them all).
    """
    def one(item: Work) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread
            return write(item, parameters[item.name], device, seed, scratch)

    total = torch.zeros((), device=device)  # float32: not every accelerator has float64 (MPS)
    with preserved_random_state(device), torch.no_grad():
        transformers.trainer_utils.set_seed(seed)  # as `mergekit-yaml --random-seed`
        if pool is None:
            for item in on_device(work, device):
                total += one(item)
        else:
            futures = [pool.submit(one, item) for item in work]
            try:
                for future in futures:
                    total += future.result()
            finally:  # after a failure, nothing still writes once the caller moves on
                for future in futures:
                    future.cancel()
                wait(futures)
    if not torch.isfinite(total).item():  # the candidate's one wait for the device
        bad = next((item.name for item in work if parameters[item.name].is_floating_point()
                    and not torch.isfinite(parameters[item.name]).all()), None)
        if bad is not None:
            raise FloatingPointError(f"the merge gave non-finite weights in {bad}")


def on_device(work: Sequence[Work], device: torch.device) -> Iterable[Work]:
    """`work` with every tensor's inputs on the device: a tensor's inputs kept elsewhere (`parents: host`) are
    moved there one tensor ahead, while the previous one merges. Decided per tensor: in a multi-stage recipe,
    host parents and an earlier stage's output, already on the device, meet in one candidate."""
    moved = prefetched(((item, item.inputs) for item in work), device)
    return (item if inputs is item.inputs else replace(item, inputs=inputs) for item, inputs in moved)


def write(item: Work, target: torch.Tensor, device: torch.device, seed: int, scratch: Scratch) -> torch.Tensor:
    """Write one tensor into `target` (evomerge's pieced kernel where one applies, else mergekit's
    task); returns its finiteness probe."""
    kernel = kernel_for(item.task.method_name)
    if kernel is not None:
        probe = kernel(item.task, item.inputs, target, item.dtype, scratch, noised=bool(item.noise))
        if probe is not None:
            if item.noise:  # the target holds the value in its output dtype: noise it there
                target.copy_(add_noise(target, item.name, item.noise, seed))
                probe = finite_probe(target)
            return probe
    value = merged(item, device)
    if item.dtype:
        value = value.to(dtype=dtype_from_name(item.dtype))
    value = add_noise(value, item.name, item.noise, seed)
    target.copy_(value)
    return finite_probe(value) if value.is_floating_point() else torch.zeros((), device=device)


def merged(item: Work, device: torch.device) -> torch.Tensor:
    """mergekit's merge task run as its Executor runs it, on the merge device."""
    inputs = item.inputs
    if item.task.uses_accelerator():
        inputs = {model: _to(tensor, device) for model, tensor in inputs.items()}
    value = item.task.execute(tensors=inputs)
    if value is None:
        raise ValueError(f"mergekit's {item.task.method_name} merge gave no tensor for {item.name}, "
                         "which the output model needs")
    return _to(value, device)


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor if tensor.device == device else tensor.to(device=device, non_blocking=device.type in ("cuda", "xpu"))
