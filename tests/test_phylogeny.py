"""`evomerge tree`: the family tree from the weights recovers how the models were trained."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from Bio import Phylo
from click.testing import CliRunner
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import evomerge.tree.distances as distances_module
from evomerge.cli import main
from evomerge.paths import TASKS_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.tree import leaf_names, measure_distances, neighbor_joining, open_models
from evomerge.zoo.second_generation import fine_tune_further

SPECIALISTS = ["pair", "rev", "sort", "shift"]
GRANDCHILDREN = {"rev_then_sort": ("rev", "sort"), "shift_then_pair": ("shift", "pair")}  # name: (parent, new skill)


@pytest.fixture(scope="module")
def family(zoo, tmp_path_factory):
    """The zoo plus two second-generation fine-tunes: a specialist trained 40 steps more on another skill."""
    folder = tmp_path_factory.mktemp("grandchildren")
    paths = {name: str(zoo["dir"] / name) for name in ["base"] + SPECIALISTS}
    for seed, (name, (parent, skill)) in enumerate(GRANDCHILDREN.items(), start=100):
        paths[name] = str(fine_tune_further(Path(paths[parent]), parent, skill, folder / name, steps=40, seed=seed))
    return paths


def test_the_tree_puts_each_grandchild_beside_its_own_parent(family):
    models = open_models(list(family.values()))
    distances = measure_distances(models)
    tree = neighbor_joining(distances, root="base")
    for child, (parent, _) in GRANDCHILDREN.items():
        assert {leaf.name for leaf in tree.common_ancestor(child, parent).get_terminals()} == {child, parent}
        by_path = sorted((tree.distance(child, leaf.name), leaf.name) for leaf in tree.get_terminals() if leaf.name != child)
        assert by_path[0][1] == parent
        assert by_path[0][0] < 0.5 * by_path[1][0], by_path  # with a margin
    nearest = dict(zip(distances.names, (distances.names[j] for j in distances.nearest())))
    for specialist in ("pair", "sort"):  # no children of their own: their nearest relative is the base
        assert nearest[specialist] == "base"


def test_tree_command_writes_a_tree_tables_pictures_and_layer_groups(family, demo_recipe, tmp_path):
    out = tmp_path / "tree"
    result = CliRunner().invoke(main, ["tree", *family.values(), "--out", str(out), "--reference", family["base"] + "/",
                                       "--suggest-groups", "2"])
    assert result.exit_code == 0, result.output
    names = list(family)

    tree = Phylo.read(out / "tree.nwk", "newick")
    assert sorted(leaf.name for leaf in tree.get_terminals()) == sorted(names)
    assert [leaf.name for leaf in tree.root.clades if leaf.is_terminal()] == ["base"]  # rooted at the reference

    with (out / "distances.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["model"] + names
    matrix = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert np.allclose(matrix, matrix.T) and np.all(np.diag(matrix) == 0) and np.all(matrix[~np.eye(len(names), dtype=bool)] > 0)

    with (out / "layers.csv").open() as handle:
        layers = list(csv.DictReader(handle))
    assert {row["module"] for row in layers} == {"attention", "mlp", "other"}
    assert {row["layer"] for row in layers} == {"", "0", "1", "2", "3"}
    by_model = {row["model"]: row["nearest_relative"] for row in layers}
    assert by_model["rev_then_sort"] == "rev" and by_model["shift_then_pair"] == "shift"

    for picture in ("tree.png", "layers.png"):
        image = matplotlib.image.imread(out / picture)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # the suggested groups go into a recipe's search entry as they are printed
    line = next(line for line in result.output.splitlines() if line.startswith("layer_groups:"))
    groups = yaml.safe_load(line)["layer_groups"]
    assert len(groups) == 2 and groups[0][0] == 0 and groups[-1][1] == 4
    recipe = demo_recipe(search=[{"parameter": "weight", "range": [0.0, 1.5], "layer_groups": groups}])
    space = build_space(load_recipe(recipe))
    assert space.dimension == 2 * 4
    first = space.decode(np.linspace(0.1, 0.8, space.dimension)).merge.models[0].parameters["weight"]
    boundary = groups[0][1]
    assert len(first) == 4 and len(set(first[:boundary])) == 1 and len(set(first[boundary:])) == 1 and first[0] != first[-1]


def test_models_of_different_shapes_get_one_line_naming_both_and_the_tensor(zoo, tmp_path):
    config = LlamaConfig.from_pretrained(zoo["dir"] / "base")
    config.intermediate_size = 128
    LlamaForCausalLM(config).save_pretrained(tmp_path / "narrow")
    result = CliRunner().invoke(main, ["tree", str(zoo["dir"] / "base"), str(zoo["dir"] / "rev"),
                                       str(tmp_path / "narrow"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and message.startswith("error:")
    assert "base" in message and "narrow" in message and "mlp" in message and "192" in message and "128" in message
    assert not (tmp_path / "out").exists()


def test_leaves_are_named_by_folder_with_parents_only_where_names_clash():
    assert leaf_names(["runs/a/merged", "runs/b/merged", "/zoo/rev", "owner/model"]) == [
        "a/merged", "b/merged", "rev", "model"]


def test_too_few_models_and_a_missing_folder_are_one_line_errors(zoo, tmp_path):
    two = CliRunner().invoke(main, ["tree", str(zoo["dir"] / "base"), str(zoo["dir"] / "rev"), "--out", str(tmp_path)])
    assert two.exit_code == 2 and "at least three models" in two.output
    missing = CliRunner().invoke(main, ["tree", str(zoo["dir"] / "base"), str(zoo["dir"] / "rev"),
                                        str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "nowhere" in missing.output and "\n" not in missing.output.strip()
    models = [str(zoo["dir"] / name) for name in ("base", "rev", "sort")]
    groups = CliRunner().invoke(main, ["tree", *models, "--out", str(tmp_path / "t"), "--suggest-groups", "9"])
    assert groups.exit_code == 2 and "--suggest-groups: expected between 1 and 4 groups" in groups.output
    assert (tmp_path / "t" / "tree.nwk").is_file()  # what was computed is kept


def test_streaming_opens_one_file_at_a_time_and_blocks_give_the_same_distances(family, monkeypatch):
    models = open_models(list(family.values()))
    whole = measure_distances(models)
    opened, most = [0], [0]
    real_open = distances_module.safe_open

    class Counting:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            opened[0] += 1
            most[0] = max(most[0], opened[0])
            return self.handle.__enter__()

        def __exit__(self, *exc):
            opened[0] -= 1
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(distances_module, "safe_open", Counting)
    budget = models[0].nbytes // 16
    blocked = measure_distances(models, budget_bytes=budget)
    assert most[0] == 1
    assert blocked.peak_bytes <= budget
    assert np.allclose(blocked.matrix, whole.matrix, rtol=1e-9, atol=0)


def test_peak_memory_stays_below_two_models_for_eight_models(tmp_path):
    """Eight 16 MB models: the process grows by less than two models (it would grow by eight loading them whole)."""
    rng = np.random.default_rng(0)
    import torch

    base = {f"model.layers.{i}.mlp.up_proj.weight": torch.from_numpy(rng.standard_normal((1024, 512), dtype=np.float32))
            for i in range(8)}
    for index in range(8):
        tensors = {name: value + 0.01 * index * torch.ones_like(value) for name, value in base.items()}
        (tmp_path / f"m{index}").mkdir()
        save_file(tensors, tmp_path / f"m{index}" / "model.safetensors")
    script = textwrap.dedent(f"""
        import json, re, sys
        import torch
        torch.set_num_threads(1)
        from evomerge.tree import measure_distances, open_models
        def kib(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
        models = open_models([{str(tmp_path)!r} + f"/m{{i}}" for i in range(8)])
        measure_distances(models[:3])  # libraries' lazily loaded code and buffers
        open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current size
        before = kib("VmRSS")
        distances = measure_distances(models)  # the default budget
        print(json.dumps({{"grown": (kib("VmHWM") - before) * 1024, "model": models[0].nbytes}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["grown"] < 2 * figures["model"], figures


def test_scores_are_drawn_beside_the_leaves(zoo, tmp_path):
    out = tmp_path / "tree"
    models = [str(zoo["dir"] / name) for name in ("base", "rev", "sort")]
    result = CliRunner().invoke(main, ["tree", *models, "--out", str(out), "--tasks", "zoo_rev_report,zoo_sort_report",
                                       "--task-path", str(TASKS_DIR)])
    assert result.exit_code == 0, result.output
    with (out / "scores.csv").open() as handle:
        scores = {row["model"]: row for row in csv.DictReader(handle)}
    assert float(scores["rev"]["zoo_rev_report"]) > float(scores["base"]["zoo_rev_report"]) + 0.2
    assert float(scores["sort"]["zoo_sort_report"]) > float(scores["base"]["zoo_sort_report"]) + 0.2
    assert matplotlib.image.imread(out / "tree.png").shape[1] > 100


def test_hub_ids_are_fetched_like_mergekit_fetches_them(zoo, hub, without_xet, tmp_path):
    """Models pushed to a loopback Hub, then named by Hub id; a fresh process reads HF_ENDPOINT at import."""
    from evomerge.outputs.hub import push_folder

    for name in ("base", "rev", "sort"):
        push_folder(zoo["dir"] / name, f"someone/{name}")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run([sys.executable, "-m", "evomerge.cli", "tree", "someone/base", "someone/rev", "someone/sort",
                             "--out", str(tmp_path / "tree")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    tree = Phylo.read(tmp_path / "tree" / "tree.nwk", "newick")
    assert sorted(leaf.name for leaf in tree.get_terminals()) == ["base", "rev", "sort"]
    assert hub.requests_to("GET", r"/someone/rev/resolve/.*/model\.safetensors")
