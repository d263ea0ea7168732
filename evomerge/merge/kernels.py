"""mergekit's task arithmetic and linear merges, bit for bit, with a fraction of their memory traffic.

mergekit's `GeneralizedTaskArithmeticMerge.merge_group` makes about ten tensor-sized passes
per output (each difference, a stacked copy, the weighting, the sum, the base added, fresh
temporaries each time), and evomerge then copies the result into the resident model. Here the
same torch operations, in the same order and dtypes, run on cache-sized pieces of the tensor
into scratch buffers kept between tensors and candidates, and the last one writes into the
resident parameter: each input is read once and the output written once. Every operation is
element-wise or, for the sum over the inputs, a reduction whose order per element does not
depend on the piece (torch sums a short leading dimension row by row), so each value is the
one mergekit computes; `tests/test_parity.py` holds it to that for every method and zoo.

Only the plain case is taken: task arithmetic (no sparsification, no sign consensus) or linear,
over floating-point inputs of one shape, all present, written to a parameter of the result's
dtype or cast to the parameter's once, as `copy_` casts (a float32 merge scored in bfloat16,
CUDA's default), unless noise must be added before that cast. Anything else runs mergekit's
task as it is. (The TIES family ranks each difference by magnitude over the whole tensor and
DARE/DELLA draw random numbers per element, so their pieces are not independent; they run
mergekit's task.)
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

import torch
from mergekit import merge_methods
from mergekit.common import ModelReference, dtype_from_name
from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from evomerge.merge.parent_cache import Inputs

PIECE = 1 << 18  # elements per piece (1 MiB of float32): a multiple of every vector width, so pieces split no vector


def plain_task_arithmetic(method_name: str) -> bool:
    method = merge_methods.get(method_name)
    return (isinstance(method, GeneralizedTaskArithmeticMerge) and method.sparsification_method is None
            and method.consensus_method is None)


class Scratch:
    """Piece-sized buffers, kept between tensors and candidates, one set per thread."""

    def __init__(self):
        self._local = threading.local()

    def get(self, device: torch.device, dtype: torch.dtype, rows: int) -> torch.Tensor:
        buffers: Dict[Tuple[torch.device, torch.dtype, int], torch.Tensor] = self._local.__dict__.setdefault("b", {})
        key = (device, dtype, rows)
        if key not in buffers:
            buffers[key] = torch.empty((rows, PIECE), dtype=dtype, device=device)
        return buffers[key]


def _plain(task: ExecuteMergeMethodTask, inputs: Inputs, out: torch.Tensor, out_dtype: Optional[str],
           noised: bool) -> Optional[Tuple[List[ModelReference], torch.dtype]]:
    """The models in mergekit's order and the dtype it merges in, if this tensor is the plain case:
    every input present, floating point, of one shape, on `out`'s device and widening exactly to
    that dtype (mergekit casts each input to it first), and the result (cast to `out_dtype`, if
    given) reaching `out` in one cast, or in none if it is `noised` (noise is added before the cast)."""
    models = [m for m in task.model_order if m in inputs]
    if task.out_dtype or len(models) < len(task.model_order) or not models:
        return None
    tensors = [inputs[m] for m in models]
    first = tensors[0]
    if not all(t.is_floating_point() and t.shape == first.shape and t.device == out.device and t.is_contiguous()
               for t in tensors) or out.shape != first.shape or not out.is_contiguous():
        return None
    dtype = dtype_from_name(task.dtype)
    if dtype is None:
        dtype = first.dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    saved = dtype_from_name(out_dtype)
    if saved not in (None, dtype, out.dtype) or (noised and out.dtype != (saved or dtype)) or any(
            torch.promote_types(t.dtype, dtype) != dtype for t in tensors):
        return None
    return models, dtype


def _on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of parameters, copied to the device without waiting for it (a copy from pageable
    memory is staged at once), where `torch.tensor(..., device=)` would synchronize per tensor."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _pieces(size: int):
    for start in range(0, size, PIECE):
        yield start, min(start + PIECE, size)


def task_arithmetic(task: ExecuteMergeMethodTask, inputs: Inputs, out: torch.Tensor, out_dtype: Optional[str],
                    scratch: Scratch, *, noised: bool) -> Optional[torch.Tensor]:
    """Write mergekit's task-arithmetic result for `task`, cast to `out_dtype`, into `out`
    (`GeneralizedTaskArithmeticMerge.merge_group`'s operations, piece by piece).

    Returns a probe of the written values (finite_probe's contract), or None, writing nothing,
    when the inputs are not the plain case (the caller then runs mergekit's task).
    """
    plain = _plain(task, inputs, out, out_dtype, noised)
    if plain is None or task.base_model not in plain[0]:
        return None
    models, dtype = plain
    others = [m for m in models if m != task.base_model]
    if not others:
        return None
    base = inputs[task.base_model].view(-1)
    deltas = [inputs[m].view(-1) for m in others]
    weights = _on_device([task.input_parameters[m]["weight"] for m in others], dtype, out.device).unsqueeze(-1)
    divisor = weights.sum(dim=0)
    divisor = torch.where(divisor.abs() < 1e-8, 1, divisor)  # mergekit's masked assignment, without its sync
    normalize, scale = task.parameters["normalize"], task.parameters["lambda"]
    rows = scratch.get(out.device, dtype, len(others) + 2)
    target = out.view(-1)
    probe = torch.zeros((), device=out.device)  # float32: MPS has no float64
    for start, stop in _pieces(target.numel()):
        size = stop - start
        stacked = rows[: len(others), :size] if size == PIECE else rows.view(-1)[: len(others) * size].view(-1, size)
        mixed, result = rows[-2, :size], rows[-1, :size]
        piece_base = base[start:stop]
        if piece_base.dtype != dtype:
            piece_base = result.copy_(piece_base)
        for row, delta in zip(stacked, deltas):
            torch.sub(delta[start:stop], piece_base, out=row)
        stacked.mul_(weights)
        torch.sum(stacked, dim=0, out=mixed)
        if normalize:
            mixed /= divisor
        if scale != 1:
            mixed *= scale
        if out.dtype == dtype:
            torch.add(piece_base, mixed, out=target[start:stop])
        else:
            target[start:stop].copy_(torch.add(piece_base, mixed, out=result))
        probe += finite_probe(target[start:stop])
    return probe


def linear(task: ExecuteMergeMethodTask, inputs: Inputs, out: torch.Tensor, out_dtype: Optional[str],
           scratch: Scratch, *, noised: bool) -> Optional[torch.Tensor]:
    """As `task_arithmetic`, for mergekit's `linear` (its batch kernel `linear_merge`, piece by piece)."""
    plain = _plain(task, inputs, out, out_dtype, noised)
    if plain is None:
        return None
    models, dtype = plain
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    weight = _on_device([[task.input_parameters[m]["weight"] for m in models]], compute, out.device)
    denominator = weight.sum(dim=1)
    coefficients = weight.unbind(1)
    normalize = task.parameters["normalize"]
    result_rows = scratch.get(out.device, compute, 1)
    staging = scratch.get(out.device, dtype, 2)  # an input cast to `dtype`; the result cast back
    sources = [inputs[m].view(-1) for m in models]
    target = out.view(-1)
    probe = torch.zeros((), device=out.device)  # float32: MPS has no float64
    for start, stop in _pieces(target.numel()):
        size = stop - start
        result = result_rows[0, :size].zero_()
        for source, coefficient in zip(sources, coefficients):
            piece = source[start:stop]
            if piece.dtype != dtype:  # the operands' dtypes as mergekit's, so torch takes the same kernel
                piece = staging[0, :size].copy_(piece)
            result.addcmul_(piece, coefficient)
        if normalize:
            result.div_(denominator)
        if dtype != compute:  # linear_merge returns its float32 sum cast to the inputs' dtype
            result = staging[1, :size].copy_(result)
        target[start:stop].copy_(result)
        probe += finite_probe(target[start:stop])
    return probe


KERNELS = {"linear": linear}


def kernel_for(method_name: str):
    """The pieced kernel for a method, if it has one."""
    if plain_task_arithmetic(method_name):
        return task_arithmetic
    return KERNELS.get(method_name)


def finite_probe(value: torch.Tensor) -> torch.Tensor:
    """A sum that is finite whenever every value is (a NaN or an infinity carries through a sum);
    one read, where `isfinite(value).all()` costs several passes. A finite tensor whose sum
    overflows only sends the caller to the exact check."""
    return value.sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
