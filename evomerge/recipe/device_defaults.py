"""What the recipe leaves to the device: the batch size candidates are scored with.

On CUDA lm-eval finds the largest batch that fits; on the CPU a fixed batch. The recipe's `eval:` keys win.
"""

from __future__ import annotations

from typing import Union

from evomerge.recipe.model import EvalSpec

CPU_BATCH_SIZE = 64


def batch_size(options: EvalSpec, device_type: str) -> Union[int, str]:
    """`eval.batch_size`, else lm-eval's own `auto` on CUDA and 64 elsewhere."""
    if options.batch_size is not None:
        return options.batch_size
    return "auto" if device_type == "cuda" else CPU_BATCH_SIZE
