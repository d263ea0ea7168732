"""The batch size the recipe leaves to the device: one decision, testable without a GPU."""

from __future__ import annotations

from evomerge.recipe.device_defaults import batch_size
from evomerge.recipe.model import EvalSpec


def test_the_batch_size_is_lm_evals_auto_on_cuda_and_64_elsewhere_unless_the_recipe_says():
    assert batch_size(EvalSpec(), "cuda") == "auto" and batch_size(EvalSpec(), "cpu") == 64
    assert batch_size(EvalSpec(batch_size=8), "cuda") == 8
    assert batch_size(EvalSpec(batch_size="auto"), "cpu") == "auto"
