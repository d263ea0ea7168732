"""Layer routing (data-flow search): a route is a plain passthrough recipe, and the resident model
whose depth follows each candidate holds exactly what `mergekit-yaml` writes for it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from weights import assert_same_as_resident

from evomerge.errors import EvomergeError
from evomerge.merge.routed_model import RoutingMaterializer, search_materializer
from evomerge.merge.write import write_with_mergekit
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.route import Hop, from_merge, to_merge
from evomerge.recipe.routing import RoutingSpace
from evomerge.recipe.space_factory import build_space
from evomerge.run.memory_plan import make_plan
from evomerge.run_options import RunOptions

MERGEKIT = MergeOptions(device="cpu", quiet=True)


def _routing(zoo, **block) -> dict:
    models = [str(zoo["dir"] / "pair"), str(zoo["dir"] / "rev")]
    return {
        "merge_method": "passthrough",
        "models": [{"model": models[0]}],
        "dtype": "float32",
        "evomerge": {"seed": 3, "search": [{"routing": {"models": models, **block}}]},
    }


def _space(write_recipe, recipe) -> RoutingSpace:
    space = build_space(load_recipe(write_recipe(recipe)))
    assert isinstance(space, RoutingSpace)
    return space


def _draws(space: RoutingSpace, count: int, seed: int = 0):
    """Genotypes of many shapes: few or many slots included, from one layer to the most allowed."""
    rng = np.random.default_rng(seed)
    slots = len(space.slots)
    for k in range(count):
        x = rng.uniform(space.lower, space.upper)
        share = [0.05, 0.3, 0.6, 0.95][k % 4]
        x[:slots] = np.where(rng.random(slots) < share, rng.uniform(0.01, 1, slots), rng.uniform(-1, -0.01, slots))
        yield x


def test_the_starting_point_is_the_recipes_own_route(zoo, write_recipe):
    space = _space(write_recipe, _routing(zoo, repeats=2, max_layers=6, scale=[0.5, 1.5]))
    pair = str(zoo["dir"] / "pair")
    assert len(space.slots) == 16 and space.dimension == 32 and space.max_layers == 6
    assert space.route(space.x0) == [Hop(pair, i, 1.0) for i in range(4)]
    described = space.describe()
    assert described[0]["binary"] and described[0]["slot"] == 0 and "binary" not in described[16]
    hops, ends = from_merge(space.starting_point().merge, lambda model: 4)
    assert (hops, ends) == (space.route(space.x0), pair)


def test_every_vector_decodes_to_a_route_within_the_limits(zoo, write_recipe):
    space = _space(write_recipe, _routing(zoo, repeats=2, max_layers=5))
    assert len(space.route(np.full(space.dimension, -1.0))) == 1  # none included: the largest gene's slot
    x = np.linspace(1.0, 0.1, space.dimension)
    route = space.route(x)
    assert len(route) == 5 and route == [Hop(*space.slots[s]) for s in range(5)]  # the five largest, in slot order
    for x in _draws(space, 20):
        hops = space.route(x)
        assert 1 <= len(hops) <= 5
        assert from_merge(space.decode(x).merge, space.layers.__getitem__) == (hops, space.ends)


def test_a_route_that_starts_and_ends_elsewhere_keeps_the_named_models_embeddings_and_head(zoo):
    pair, rev = str(zoo["dir"] / "pair"), str(zoo["dir"] / "rev")
    merge = to_merge([Hop(rev, 2, 0.5), Hop(rev, 3, 0.5), Hop(pair, 0)], pair)
    assert [tuple(s.sources[0].layer_range) for s in merge.slices] == [(0, 0), (2, 4), (0, 1)]
    assert str(merge.slices[0].sources[0].model) == pair and str(merge.base_model) == pair
    merge = to_merge([Hop(pair, 1)], rev)
    assert [(str(s.sources[0].model), tuple(s.sources[0].layer_range)) for s in merge.slices] == [
        (rev, (0, 0)), (pair, (1, 2)), (rev, (0, 0))]


@pytest.mark.parametrize("family", ["llama", "tied"])
def test_every_drawn_shape_has_mergekits_weights(family, zoo, tied_zoo, write_recipe, tmp_path):
    chosen = tied_zoo if family == "tied" else zoo
    space = _space(write_recipe, _routing(chosen, repeats=2, max_layers=7, scale=[0.5, 1.5],
                                          embeddings_from=str(chosen["dir"] / "rev")) | {
        "models": [{"model": str(chosen["dir"] / "rev")}]})
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    depths = set()
    for k, x in enumerate(_draws(space, 6)):
        candidate = space.decode(x)
        materializer.materialize(candidate)
        write_with_mergekit(candidate, tmp_path / str(k), MERGEKIT)
        assert_same_as_resident(load_file(tmp_path / str(k) / "model.safetensors"), materializer.model)
        written = json.loads((tmp_path / str(k) / "config.json").read_text())["num_hidden_layers"]
        assert materializer.model.config.num_hidden_layers == written == len(space.route(x))
        depths.add(written)
        shutil.rmtree(tmp_path / str(k))
    assert len(depths) >= 3


def test_a_shallower_candidate_after_a_deeper_one_scores_as_its_merged_folder(zoo, write_recipe, tmp_path):
    space = _space(write_recipe, _routing(zoo, repeats=2, max_layers=8, scale=[0.5, 1.5]))
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    deep, shallow = np.array(space.x0), np.array(space.x0)
    deep[:8] = 1.0  # both models' layers
    shallow[:16] = -1.0
    shallow[[5, 12]] = 1.0  # rev's layer 1, then pair's layer 0 again
    shallow[16 + 5] = 0.6
    materializer.materialize(space.decode(deep))
    candidate = space.decode(shallow)
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "merged", MERGEKIT)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokens = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        assert torch.equal(materializer.model(tokens).logits, merged(tokens).logits)
    assert merged.config.num_hidden_layers == 2


def test_only_what_changed_is_copied_and_the_model_is_never_reallocated(zoo, write_recipe):
    space = _space(write_recipe, _routing(zoo, repeats=2, max_layers=8, scale=[0.5, 1.5]))
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    storages = {p.data_ptr() for p in materializer.model.parameters()}
    x = np.array(space.x0)
    first = materializer.materialize(space.decode(x))
    assert first.recomputed == first.total
    assert materializer.materialize(space.decode(x)).recomputed == 0
    x[16 + 2] = 0.75  # the scale of the route's third layer: its o_proj and down_proj
    assert materializer.materialize(space.decode(x)).recomputed == 2
    for x in _draws(space, 8, seed=1):
        materializer.materialize(space.decode(x))
        assert {p.data_ptr() for p in materializer.model.parameters()} <= storages


def test_the_plan_sizes_the_output_model_at_max_layers(zoo, write_recipe):
    shallow = make_plan(load_recipe(write_recipe(_routing(zoo, max_layers=4), "shallow.yaml")), device="cpu")
    deep = make_plan(load_recipe(write_recipe(_routing(zoo, repeats=2, max_layers=12), "deep.yaml")), device="cpu")
    assert (shallow.weights.config.num_hidden_layers, deep.weights.config.num_hidden_layers) == (4, 12)
    assert len(deep.weights.parents) == 2 and deep.weights.output > shallow.weights.output


def test_a_parent_routes_only_through_its_own_layers(zoo, write_recipe):
    from mergekit.common import ModelReference

    space = _space(write_recipe, _routing(zoo, repeats=2, max_layers=8))
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    assert isinstance(materializer, RoutingMaterializer)
    materializer.load_parent(ModelReference.parse(str(zoo["dir"] / "pair")))
    own = load_file(zoo["dir"] / "pair" / "model.safetensors")
    assert_same_as_resident(own, materializer.model)
    with pytest.raises(ValueError):
        materializer.load_parent(ModelReference.parse(str(zoo["dir"] / "rev")))


def _other_hidden_size(zoo, tmp_path) -> str:
    folder = tmp_path / "wider"
    folder.mkdir()
    config = json.loads((zoo["dir"] / "rev" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"hidden_size": 128}))
    return str(folder)


@pytest.mark.parametrize("change, key, message", [
    (lambda r, z, t: r["evomerge"]["search"][0]["routing"].update(max_layers=9), "routing.max_layers", "8 slots"),
    (lambda r, z, t: r["evomerge"]["search"][0]["routing"].update(scale=[1.5, 0.5]), "routing.scale", "low < high"),
    (lambda r, z, t: r["evomerge"]["search"][0]["routing"].update(embeddings_from="elsewhere"),
     "routing", "embeddings_from must be one of the models"),
    (lambda r, z, t: r["evomerge"]["search"][0]["routing"].update(repets=2), "routing.repets", "did you mean 'repeats'"),
    (lambda r, z, t: r["evomerge"]["search"][0]["routing"]["models"].append(_other_hidden_size(z, t)),
     "routing.models[2]", "hidden_size is 128 here"),
    (lambda r, z, t: r["evomerge"]["search"].append({"parameter": "scale", "range": [0, 1]}), "search", "whole search"),
    (lambda r, z, t: r.update(models=None, slices=[{"sources": [{"model": str(z["dir"] / m), "layer_range": [0, 1]}]}
                                                   for m in ("pair", "sort", "pair")]), "slices", "no slot"),
    (lambda r, z, t: r.update(merge_method="linear"), "merge_method", "passthrough"),
])
def test_bad_routing_blocks_are_refused_in_one_line_naming_the_key(change, key, message, zoo, write_recipe, tmp_path):
    recipe = _routing(zoo)
    change(recipe, zoo, tmp_path)
    path = write_recipe(recipe)
    with pytest.raises(EvomergeError) as raised:
        build_space(load_recipe(path))
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and key in text and message in text and "\n" not in text


def test_a_routed_model_whose_layers_have_other_shapes_is_refused_before_anything_loads(zoo, write_recipe,
                                                                                        tmp_path):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from evomerge.recipe.validate import check_search

    config = AutoConfig.from_pretrained(zoo["dir"] / "rev")
    config.intermediate_size = 96
    LlamaForCausalLM(config).save_pretrained(tmp_path / "narrow")
    AutoTokenizer.from_pretrained(zoo["dir"] / "rev").save_pretrained(tmp_path / "narrow")
    recipe = _routing(zoo)
    recipe["evomerge"]["search"][0]["routing"]["models"].append(str(tmp_path / "narrow"))
    recipe["evomerge"] |= {"tasks": [{"name": "zoo_rev_search"}], "budget": {"evaluations": 4}}
    path = write_recipe(recipe)
    with pytest.raises(EvomergeError, match=r"evomerge\.search\[0\]\.routing\.models: .*narrow: tensor .*mlp.* has shape"):
        check_search(load_recipe(path))


def test_scaled_layers_merged_in_bfloat16_have_mergekits_bits(zoo, write_recipe, tmp_path):
    """Parents narrowed to the recipe's dtype at load, the scale applied there, the result cast to out_dtype."""
    recipe = _routing(zoo, repeats=2, max_layers=6, scale=[0.5, 1.5]) | {"dtype": "bfloat16", "out_dtype": "float32"}
    space = _space(write_recipe, recipe)
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    for k, x in enumerate(_draws(space, 3, seed=2)):
        candidate = space.decode(x)
        materializer.materialize(candidate)
        write_with_mergekit(candidate, tmp_path / str(k), MERGEKIT)
        assert_same_as_resident(load_file(tmp_path / str(k) / "model.safetensors"), materializer.model)
