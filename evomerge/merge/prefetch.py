"""Host-resident parents' inputs moved to the device one tensor ahead, on a side stream.

With `parents: host` each tensor's inputs cross the bus just before its merge. Pinned memory
makes the copy asynchronous for the host, but a copy queued on the stream that merges still
runs between that stream's kernels, so the device waits for the bus. Here the next tensor's
copy is queued on a second stream before the current tensor is handed out, so it crosses
while the device merges; the merging stream waits for it only by an event (no host sync), and
each moved tensor is recorded on that stream so its memory is not reused while still read.
An item whose inputs are all on the device already (an earlier stage's output) passes as it
is, with no copy and no event. Without an accelerator the same one-ahead order runs with plain
moves: the CPU path tests the order, the accelerator path adds streams.
"""

from __future__ import annotations

from typing import Dict, Hashable, Iterable, Iterator, Optional, Tuple, TypeVar

import torch

Key = TypeVar("Key")
Inputs = Dict[Hashable, torch.Tensor]


def prefetched(items: Iterable[Tuple[Key, Inputs]], device: torch.device) -> Iterator[Tuple[Key, Inputs]]:
    """`items` with every input on `device`; item k+1's copy is started before item k is yielded."""
    side = torch.Stream(device=device) if _accelerator(device) else None
    source = iter(items)
    upcoming = _start(next(source, None), device, side)
    while upcoming is not None:
        (key, moved), ready = upcoming
        upcoming = _start(next(source, None), device, side)
        if ready is not None:
            merging = torch.accelerator.current_stream(device)
            merging.wait_event(ready)
            for tensor in moved.values():
                tensor.record_stream(merging)
        yield key, moved


def _start(item: Optional[Tuple[Key, Inputs]], device: torch.device,
           side: Optional[torch.Stream]) -> Optional[Tuple[Tuple[Key, Inputs], Optional[torch.Event]]]:
    if item is None:
        return None
    key, inputs = item
    if all(_there(tensor.device, device) for tensor in inputs.values()):
        return (key, inputs), None
    if side is None:
        return (key, {model: tensor.to(device) for model, tensor in inputs.items()}), None
    with side:
        moved = {model: tensor.to(device, non_blocking=True) for model, tensor in inputs.items()}
        return (key, moved), side.record_event()


def _accelerator(device: torch.device) -> bool:
    """Whether `device` is this machine's accelerator, whose copies can run on a side stream."""
    accelerator = torch.accelerator.current_accelerator()
    return accelerator is not None and accelerator.type == device.type


def _there(where: torch.device, device: torch.device) -> bool:
    return where.type == device.type and (device.index is None or where.index == device.index)
