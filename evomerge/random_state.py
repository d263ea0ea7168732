"""Keeps code that draws from the global random generators (lm-eval, mergekit's DARE) from
disturbing anything else; evomerge's own randomness always uses explicit generators."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Optional, Union

import numpy as np
import torch


@contextlib.contextmanager
def preserved_random_state(device: Optional[Union[str, torch.device]] = None) -> Iterator[None]:
    """Whatever lm-eval or a merge method draws from the global generators stays inside.

    With `device`, only that device's generator is forked besides the CPU's (a worker draws
    on its own device; reading every visible GPU's state would touch devices it never uses);
    without, every visible GPU's.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(**_accelerator_generators(device)):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _accelerator_generators(device: Optional[Union[str, torch.device]]) -> dict:
    """fork_rng's arguments: which accelerator generators to fork (the CPU's always is)."""
    if device is None:
        return {"devices": list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []}
    device = torch.device(device)
    if device.type == "cpu":
        return {"devices": []}
    module = torch.get_device_module(device.type)
    return {"devices": [device.index if device.index is not None else module.current_device()],
            "device_type": device.type}
