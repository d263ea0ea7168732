"""Applying a candidate: mergekit's merge task of each changed tensor run directly over the
resident parents, in the schedule's order, and each result cast, given evomerge's noise and
copied in place into the resident model.

Each task runs as mergekit's Executor would run it (inputs moved to the merge device when the
method asks for it, the result kept there), without building a task graph per candidate.
Nothing here waits for the device per tensor: whether every written value is finite is
accumulated on the device and read once, after the last tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import transformers
from mergekit.common import dtype_from_name
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.noise import add_noise
from evomerge.merge.parent_cache import Inputs
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


def apply(work: Sequence[Work], parameters: Mapping[str, torch.Tensor], device: torch.device, seed: int) -> None:
    """Merge and write every tensor of `work`, in order, into `parameters` (the resident model's, by name).

    Raises if a merge task gives no tensor (the resident one would silently stay the previous
    candidate's) or if any written value is not finite (after writing them all).
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    with preserved_random_state(device), torch.no_grad():
        transformers.trainer_utils.set_seed(seed)  # as `mergekit-yaml --random-seed`
        for item in work:
            value = merged(item, device)
            if item.dtype:
                value = value.to(dtype=dtype_from_name(item.dtype))
            value = add_noise(value, item.name, item.noise, seed)
            if value.is_floating_point():
                total += finite_probe(value)
            parameters[item.name].copy_(value)
    if not torch.isfinite(total).item():  # the candidate's one wait for the device
        bad = next((item.name for item in work if parameters[item.name].is_floating_point()
                    and not torch.isfinite(parameters[item.name]).all()), None)
        if bad is not None:
            raise FloatingPointError(f"the merge gave non-finite weights in {bad}")


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


def finite_probe(value: torch.Tensor) -> torch.Tensor:
    """A sum that is finite whenever every value is (a NaN or an infinity carries through a sum);
    one read, where `isfinite(value).all()` costs several passes. A finite tensor whose sum
    overflows only sends the caller to the exact check."""
    return value.sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
