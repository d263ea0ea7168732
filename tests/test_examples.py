"""The recipe shapes mergekit's documentation shows, searched from their own values.

tests/examples/ holds recipes written after mergekit's documented examples (linear; TIES with
gradients and a per-filter weight; gradient SLERP with t per filter; a bio-merge; Arcee Fusion;
a passthrough frankenmerge of `slices:`; two stages in mergekit-multi's format), scaled to the
llama zoo, each with an `evomerge:` section over its numeric parameters. Each must start where
the recipe stands and keep parity with mergekit (mergekit-multi's stages for several documents).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from weights import assert_same_as_resident

from evomerge.merge.mergekit_tasks import draws_random
from evomerge.merge.multi_stage import materializer_for
from evomerge.merge.write import write_with_mergekit
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run_options import RunOptions

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_an_example_starts_at_its_own_values_with_mergekits_weights(path, zoo, tmp_path):
    recipe = load_recipe(path)
    space = build_space(recipe)
    assert space.dimension > 0
    as_written = Candidate.written(recipe)
    materializer = materializer_for(as_written, options=RunOptions(quiet=True))
    materializer.materialize(as_written)
    recomputed = materializer.materialize(space.decode(space.x0)).recomputed
    if not any(draws_random(s.merge.merge_method) for s in recipe.stages):  # the recipe's own parameters everywhere
        assert recomputed == 0, f"{recomputed} tensors of the starting point differ from the recipe's"
    write_with_mergekit(as_written, tmp_path / "mergekit")  # what mergekit-yaml merges from the file
    assert_same_as_resident(load_file(tmp_path / "mergekit" / "model.safetensors"), materializer.model)
