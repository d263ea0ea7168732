"""What the recipe leaves to the device: the dtype and batch size candidates are scored with.

One place for both decisions, so that the worker that scores, the export that must merge in the
dtype the search scored in, and `evomerge plan` that sizes memory never disagree. On CUDA a
recipe that merges in float32 is scored in bfloat16 (half the memory and tensor-core speed; the
merge itself still runs in float32) and lm-eval finds the largest batch that fits; on the CPU,
where bfloat16 matmuls are slow without matrix units, float32 and a fixed batch (with AMX units
`eval.dtype: bfloat16` is faster: the user's choice, not a default that differs by CPU model).
The recipe's `eval:` keys win.
"""

from __future__ import annotations

from typing import Optional, Union

from mergekit.config import MergeConfiguration

from evomerge.recipe.schema import EvalSpec

CPU_BATCH_SIZE = 64


def scoring_dtype(merge: MergeConfiguration, options: EvalSpec, device_type: str) -> Optional[str]:
    """`eval.dtype`, else the recipe's `out_dtype` or `dtype`, a float32 merge scored in bfloat16 on CUDA;
    None: the output config's own dtype."""
    if options.dtype:
        return options.dtype
    if device_type == "cuda" and merge.out_dtype is None and merge.dtype == "float32":
        return "bfloat16"
    return merge.out_dtype or merge.dtype


def batch_size(options: EvalSpec, device_type: str) -> Union[int, str]:
    """`eval.batch_size`, else lm-eval's own `auto` on CUDA and 64 elsewhere."""
    if options.batch_size is not None:
        return options.batch_size
    return "auto" if device_type == "cuda" else CPU_BATCH_SIZE
