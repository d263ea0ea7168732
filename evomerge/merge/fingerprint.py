"""A fingerprint of a model's weights, exact and cheap enough for every candidate, on its device.

Each tensor's bytes are read as 64-bit words and summed with wrap-around (an integer sum, so
the same on every device and in any reduction order): a change of any single value changes the
sum, and the read is one pass at memory bandwidth — on a GPU well under a millisecond per GiB,
on one CPU thread about 0.25 s for a 135M-parameter model in float32. The sums stay on the
device until all are taken, then cross to the host together: one synchronization per model.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

WORD = torch.int64
_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def fingerprint(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> Dict[str, str]:
    """Tensor name -> 'shape dtype sum' for every entry of the state dict (tied names included),
    the tensors first cast to `dtype` when given (what a model scored in another dtype held)."""
    names, sums, described = [], [], []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor = tensor.detach() if dtype is None or not tensor.is_floating_point() else tensor.detach().to(dtype)
            names.append(name)
            sums.append(_word_sum(tensor))
            described.append(f"{list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}")
    values = torch.stack(sums).cpu().tolist() if sums else []  # the one transfer (and wait) for the model
    return {name: f"{shape} {value & (2**64 - 1):016x}" for name, shape, value in zip(names, described, values)}


def _word_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum, modulo 2**64, of the tensor's bytes read as little-endian 64-bit words (the tail,
    shorter than a word, read in the tensor's own element size)."""
    flat = tensor.contiguous().view(-1)
    if flat.storage_offset() * flat.element_size() % 8:
        flat = flat.clone()  # a view that starts inside a word: words need an aligned start
    size = flat.element_size()
    whole = flat.numel() * size // 8 * 8 // size
    total = flat[:whole].view(WORD).sum() if whole else torch.zeros((), dtype=WORD, device=flat.device)
    if whole < flat.numel():
        total = total + flat[whole:].view(_INTEGER_OF_SIZE[size]).to(WORD).sum()
    return total


def first_difference(scored: Dict[str, str], now: Dict[str, str]) -> Optional[str]:
    """The first tensor (in the scored model's order) whose fingerprint differs, or that one side lacks."""
    for name in list(scored) + [n for n in now if n not in scored]:
        if scored.get(name) != now.get(name):
            return name
    return None
