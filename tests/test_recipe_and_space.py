"""A mergekit recipe with an `evomerge:` section becomes a search space and back."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from mergekit.config import ConditionalParameter, MergeConfiguration

from evomerge.errors import EvomergeError
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space


def _ta_recipe(base_model, specialists, **evomerge):
    return {
        "merge_method": "task_arithmetic",
        "base_model": base_model,
        "models": [{"model": path, "parameters": {"weight": 0.3}} for path in specialists],
        "dtype": "float32",
        "evomerge": evomerge,
    }


def test_one_gene_per_model_filter_and_layer_group(base_model, specialists, write_recipe):
    recipe = _ta_recipe(base_model, specialists, search=[
        {"parameter": "weight", "range": [0, 1], "layer_groups": 2, "filters": ["self_attn", "mlp"]},
        {"parameter": "density", "range": [0.1, 1.0], "models": [specialists[0]]},
        {"parameter": "lambda", "range": [0.5, 1.5]},
    ])
    space = build_space(load_recipe(write_recipe(recipe)))
    assert space.dimension == 4 * 3 * 2 + 1 + 1
    assert [g.name for g in space.genes[:3]] == ["weight[pair].self_attn@0", "weight[pair].self_attn@1", "weight[pair].mlp@0"]
    assert space.genes[-1].name == "lambda" and space.genes[-1].model is None


def test_the_recipes_own_values_are_the_starting_point(base_model, specialists, write_recipe):
    recipe = _ta_recipe(base_model, specialists, search=[
        {"parameter": "weight", "range": [0, 1], "layer_groups": 3},
        {"parameter": "density", "range": [0.2, 0.6]},
    ])
    recipe["models"][0]["parameters"]["weight"] = [0.0, 1.0]  # a gradient: groups read it at t = 0, 0.5, 1
    recipe["models"][1]["parameters"]["weight"] = [{"filter": "mlp", "value": 0.9}, {"value": 0.8}]
    recipe["models"][2]["parameters"]["weight"] = 7.0  # outside the range: clipped
    space = build_space(load_recipe(write_recipe(recipe)))
    x0 = dict(zip((g.name for g in space.genes), space.x0))
    assert [x0[f"weight[pair]@{k}"] for k in range(3)] == [0.0, 0.5, 1.0]
    assert x0["weight[rev]@0"] == 0.8  # the fallback value: this gene has no filter
    assert x0["weight[sort]@2"] == 1.0
    assert x0["density[shift]"] == pytest.approx(0.4)  # unset: the middle of the range


def test_decoding_writes_gradients_and_filters_into_a_copy(base_model, specialists, write_recipe):
    loaded = load_recipe(write_recipe(_ta_recipe(base_model, specialists, search=[
        {"parameter": "weight", "range": [0, 1], "layer_groups": 2, "filters": ["self_attn"]},
    ])))
    space = build_space(loaded)
    x = np.linspace(0.1, 0.8, space.dimension)
    candidate = space.decode(x)
    weight = candidate.merge.models[0].parameters["weight"]
    assert weight == [ConditionalParameter(filter="self_attn", value=[0.1, x[1]]),
                      ConditionalParameter(value=[x[2], x[3]])]
    assert loaded.merge.models[0].parameters["weight"] == 0.3  # the recipe itself is untouched
    assert space.decode(x).to_yaml() == candidate.to_yaml()
    exported = yaml.safe_load(candidate.to_yaml())
    assert exported["evomerge"] == {"seed": 0}
    MergeConfiguration.model_validate({k: v for k, v in exported.items() if k != "evomerge"})


def test_shared_parameters_live_in_the_global_parameters(base_model, specialists, write_recipe):
    space = build_space(load_recipe(write_recipe(_ta_recipe(base_model, specialists, search=[
        {"parameter": "lambda", "range": [0.5, 1.5]}]))))
    assert space.decode([1.25]).merge.parameters == {"lambda": 1.25}


def test_noise_genes_and_fixed_noise(base_model, specialists, write_recipe):
    searched = build_space(load_recipe(write_recipe(_ta_recipe(
        base_model, specialists, noise={"range": [0, 0.02], "layer_groups": 2}))))
    assert [g.name for g in searched.genes] == ["noise@0", "noise@1"]
    assert searched.decode([0.01, 0.02]).noise == (0.01, 0.02)
    assert yaml.safe_load(searched.decode([0.01, 0.02]).to_yaml())["evomerge"]["noise"] == {"std": [0.01, 0.02]}
    fixed = build_space(load_recipe(write_recipe(_ta_recipe(base_model, specialists, noise={"std": 0.005}))))
    assert fixed.dimension == 0 and fixed.starting_point().noise == (0.005,)


def test_model_paths_are_relative_to_the_recipe(zoo, tmp_path, monkeypatch):
    recipes, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    recipes.mkdir()
    elsewhere.mkdir()
    relative = os.path.relpath(zoo["dir"] / "rev", recipes)
    recipe = {"merge_method": "linear", "models": [{"model": relative, "parameters": {"weight": 1.0}}]}
    path = recipes / "relative-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(elsewhere)
    assert str(load_recipe(path).merge.models[0].model) == str((zoo["dir"] / "rev").resolve())


@pytest.mark.parametrize("search, key, message", [
    ([{"parameter": "wieght", "range": [0, 1]}], "evomerge.search[0].parameter", "did you mean 'weight'"),
    ([{"parameter": "normalize", "range": [0, 1]}], "evomerge.search[0].parameter", "not numeric"),
    ([{"parameter": "weight", "range": [0, 1], "models": ["nowhere/model"]}], "evomerge.search[0].models[0]", "not an input"),
    ([{"parameter": "weight", "range": [0, 1], "models": ["BASE"]}], "evomerge.search[0].models[0]", "base model"),
    ([{"parameter": "weight", "range": [0, 1], "layer_groups": 5}], "evomerge.search[0].layer_groups", "4 layers"),
    ([{"parameter": "lambda", "range": [0, 1], "models": ["BASE"]}], "evomerge.search[0].models", "shared"),
    ([{"parameter": "weight", "range": [0, 1]}, {"parameter": "weight", "range": [0, 2]}], "evomerge.search[1].parameter", "twice"),
])
def test_search_entries_are_checked_against_the_recipe(search, key, message, base_model, specialists, write_recipe):
    for entry in search:
        entry["models"] = [base_model if m == "BASE" else m for m in entry.get("models", [])] or entry.get("models")
        if entry["models"] is None:
            del entry["models"]
    path = write_recipe(_ta_recipe(base_model, specialists, search=search))
    with pytest.raises(EvomergeError) as error:
        build_space(load_recipe(path))
    assert error.value.key == key and message in str(error.value) and str(path) in str(error.value)
