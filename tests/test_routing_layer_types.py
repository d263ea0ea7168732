"""Routing over models whose configs carry a per-layer `layer_types` list (Qwen2/2.5/3, Gemma 2/3):
the output config's list follows the routed layers, so every depth loads in transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from shaped import write_tiny_qwen2
from transformers import AutoConfig, AutoModelForCausalLM
from weights import assert_same_as_resident, same_tensors

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.merge.routed_model import RoutingMaterializer, search_materializer
from evomerge.merge.write import write_with_mergekit
from evomerge.outputs.export import export_run
from evomerge.outputs.finish import finish_run
from evomerge.outputs.route_plot import route_of
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.route import Hop, to_merge
from evomerge.recipe.space_factory import build_space
from evomerge.run.start import SearchOptions, start_search
from evomerge.run_options import RunOptions

FULL, SLIDING = "full_attention", "sliding_attention"


@pytest.fixture(scope="module")
def qwen(tied_zoo, tmp_path_factory) -> dict:
    """Two tiny Qwen2 models of full attention, and one whose last two layers slide."""
    folder = tmp_path_factory.mktemp("qwen")
    tokenizer = tied_zoo["dir"] / "pair"
    return {"a": str(write_tiny_qwen2(folder / "a", tokenizer, seed=0)),
            "b": str(write_tiny_qwen2(folder / "b", tokenizer, seed=1)),
            "sliding": str(write_tiny_qwen2(folder / "sliding", tokenizer, seed=2,
                                            layer_types=[FULL, FULL, SLIDING, SLIDING]))}


def _layer_types(model: str):
    return AutoConfig.from_pretrained(model).layer_types


def _merge(*args) -> None:
    result = CliRunner().invoke(main, ["merge", *map(str, args)])
    assert result.exit_code == 0, result.output


def test_a_routed_search_over_qwen2_exports_a_model_whose_layer_types_follow_its_route(qwen, tasks_dir, write_recipe,
                                                                                      tmp_path):
    a, b = qwen["a"], qwen["b"]
    start = [{"sources": [{"model": a, "layer_range": [0, 4]}]}, {"sources": [{"model": b, "layer_range": [2, 4]}]}]
    recipe = write_recipe({
        "merge_method": "passthrough", "base_model": a, "slices": start, "dtype": "float32",
        "evomerge": {"seed": 5, "tasks": [{"name": "zoo_rev_search"}], "task_paths": [str(tasks_dir)],
                     "eval": {"limit": 10}, "searcher": {"name": "ga", "population": 4, "elitism": 1},
                     "search": [{"routing": {"models": [a, b], "repeats": 2, "max_layers": 7, "scale": [0.5, 1.5]}}]}})
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=6, quiet=True))
    search.run()
    finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    scored = search.store.evaluations.finished()
    assert len(scored) == 6 and all(evaluation.ok for evaluation in scored), [e.error for e in scored]
    assert len({len(route_of(evaluation.recipe)[0]) for evaluation in scored}) >= 2
    exported = export_run(tmp_path / "run", tmp_path / "exported", options=RunOptions(quiet=True))  # refuses weights other than the scored
    _merge(tmp_path / "run" / "best.yaml", tmp_path / "merged")
    hops, _ = route_of((tmp_path / "run" / "best.yaml").read_text())
    for folder in (exported, tmp_path / "merged"):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.num_hidden_layers == len(hops) == len(model.model.layers)
        assert model.config.layer_types == [_layer_types(hop.model)[hop.layer] for hop in hops]
    assert same_tensors(load_file(tmp_path / "merged" / "model.safetensors"), load_file(exported / "model.safetensors"))


def test_evomerge_merge_writes_a_route_over_sliding_and_full_layers_that_mergekit_yaml_cannot(qwen, write_recipe,
                                                                                             tmp_path):
    a, sliding = qwen["a"], qwen["sliding"]
    recipe = write_recipe({"merge_method": "passthrough", "base_model": sliding, "dtype": "float32", "slices": [
        {"sources": [{"model": a, "layer_range": [0, 1]}]},
        {"sources": [{"model": sliding, "layer_range": [1, 4]}]},
        {"sources": [{"model": sliding, "layer_range": [3, 4]}]},
    ]})
    _merge(recipe, tmp_path / "merged")
    _merge(recipe, tmp_path / "in-memory", "--in-memory")
    for folder in ("merged", "in-memory"):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        assert config["layer_types"] == [FULL, FULL, SLIDING, SLIDING, SLIDING] and config["num_hidden_layers"] == 5
        layers = AutoModelForCausalLM.from_pretrained(tmp_path / folder).model.layers
        assert [layer.self_attn.sliding_window for layer in layers] == [None, None, 8, 8, 8]
    assert same_tensors(load_file(tmp_path / "merged" / "model.safetensors"),
                        load_file(tmp_path / "in-memory" / "model.safetensors"))
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"  # README says it cannot write this config
    refused = subprocess.run([str(mergekit_yaml), str(recipe), str(tmp_path / "cli")], capture_output=True, text=True)
    assert refused.returncode != 0 and "layer_types" in refused.stderr


def test_routing_over_layers_of_different_layer_types_is_refused_in_one_line_naming_the_key(qwen, write_recipe):
    a, sliding = qwen["a"], qwen["sliding"]
    path = write_recipe({"merge_method": "passthrough", "models": [{"model": a}], "dtype": "float32",
                         "evomerge": {"search": [{"routing": {"models": [a, sliding]}}]}})
    with pytest.raises(EvomergeError) as raised:
        build_space(load_recipe(path))
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and "routing.models" in text and "`layer_types`" in text and "\n" not in text


def test_the_resident_models_config_is_the_written_one_at_every_depth(qwen, write_recipe, tmp_path):
    a, b = qwen["a"], qwen["b"]
    space = build_space(load_recipe(write_recipe({
        "merge_method": "passthrough", "models": [{"model": a}], "dtype": "float32",
        "evomerge": {"search": [{"routing": {"models": [a, b], "repeats": 2, "max_layers": 7}}]}})))
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    rng = np.random.default_rng(0)
    depths = set()
    for k, share in enumerate([0.2, 0.5, 0.8, 0.3]):
        candidate = space.decode(np.where(rng.random(space.dimension) < share, 1.0, -1.0))
        materializer.materialize(candidate)
        write_with_mergekit(candidate, tmp_path / str(k), MergeOptions(device="cpu", quiet=True))
        written = AutoConfig.from_pretrained(tmp_path / str(k))
        assert (materializer.model.config.num_hidden_layers, materializer.model.config.layer_types) == (
            written.num_hidden_layers, written.layer_types)
        assert_same_as_resident(load_file(tmp_path / str(k) / "model.safetensors"), materializer.model)
        depths.add(written.num_hidden_layers)
    assert len(depths) >= 3


def test_a_resident_model_is_not_built_over_layers_of_different_layer_types(qwen):
    a, sliding = qwen["a"], qwen["sliding"]
    gallery = to_merge([Hop(a, i) for i in range(4)] + [Hop(sliding, i) for i in range(4)], a, dtype="float32")
    with pytest.raises(ValueError, match="`layer_types` differs"):
        RoutingMaterializer(gallery, 6, options=RunOptions(device="cpu", quiet=True))
