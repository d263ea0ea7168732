"""The scoring dtype and batch size the recipe leaves to the device: one decision, testable without a GPU."""

from __future__ import annotations

import pytest
from mergekit.config import MergeConfiguration

from evomerge.recipe.device_defaults import batch_size, scoring_dtype
from evomerge.recipe.schema import EvalSpec


def _merge(**dtypes) -> MergeConfiguration:
    return MergeConfiguration(merge_method="linear", models=[{"model": "a", "parameters": {"weight": 1.0}}], **dtypes)


@pytest.mark.parametrize("dtypes, cpu, cuda", [
    ({"dtype": "float32"}, "float32", "bfloat16"),  # a float32 merge is scored in bfloat16 on CUDA only
    ({"dtype": "bfloat16"}, "bfloat16", "bfloat16"),
    ({"dtype": "float16"}, "float16", "float16"),
    ({"dtype": "float32", "out_dtype": "float32"}, "float32", "float32"),  # an output dtype the recipe asks for
    ({"dtype": "float32", "out_dtype": "float16"}, "float16", "float16"),
    ({}, None, None),  # the output config's own
])
def test_the_scoring_dtype_on_the_cpu_and_on_cuda(dtypes, cpu, cuda):
    merge = _merge(**dtypes)
    assert scoring_dtype(merge, EvalSpec(), "cpu") == cpu
    assert scoring_dtype(merge, EvalSpec(), "cuda") == cuda
    assert scoring_dtype(merge, EvalSpec(dtype="float16"), "cuda") == "float16"  # eval.dtype wins
    assert scoring_dtype(merge, EvalSpec(dtype="float32"), "cuda") == "float32"


def test_the_batch_size_is_lm_evals_auto_on_cuda_and_64_elsewhere_unless_the_recipe_says():
    assert batch_size(EvalSpec(), "cuda") == "auto" and batch_size(EvalSpec(), "cpu") == 64
    assert batch_size(EvalSpec(batch_size=8), "cuda") == 8
    assert batch_size(EvalSpec(batch_size="auto"), "cpu") == "auto"
