"""`evomerge merge`: a drop-in for mergekit-yaml that also applies evomerge's noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mergekit import merge_methods
from safetensors.torch import load_file
from weights import same_tensors

from evomerge.cli import main


def _recipe(base_model, specialists, **evomerge):
    return {
        "merge_method": "ties",
        "base_model": base_model,
        "models": [{"model": path, "parameters": {"weight": 0.6, "density": 0.7}} for path in specialists],
        "parameters": {"lambda": [0.9, 1.1]},
        "dtype": "float32",
        "evomerge": {"seed": 5, **evomerge},
    }


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def _merge(*args) -> None:
    result = CliRunner().invoke(main, ["merge", *map(str, args)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_without_noise_it_gives_mergekit_yaml_weights(base_model, specialists, write_recipe, tmp_path):
    recipe = write_recipe(_recipe(base_model, specialists, search=[{"parameter": "weight", "range": [0, 1]}]))
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(recipe), str(tmp_path / "mergekit")], check=True, capture_output=True)
    _merge(recipe, tmp_path / "evomerge")
    _merge(recipe, tmp_path / "memory", "--in-memory")
    assert same_tensors(_weights(tmp_path / "mergekit"), _weights(tmp_path / "evomerge"))
    assert same_tensors(_weights(tmp_path / "mergekit"), _weights(tmp_path / "memory"))
    assert (tmp_path / "evomerge" / "mergekit_config.yml").is_file()


def test_noise_is_reproducible_on_disk_and_in_memory(base_model, specialists, write_recipe, tmp_path):
    noisy = write_recipe(_recipe(base_model, specialists, noise={"std": [0.0, 0.05]}), "noisy.yaml")
    plain = write_recipe(_recipe(base_model, specialists), "plain.yaml")
    _merge(noisy, tmp_path / "disk")
    _merge(noisy, tmp_path / "disk-again")
    _merge(noisy, tmp_path / "memory", "--in-memory")
    _merge(plain, tmp_path / "plain")
    disk, plain_weights = _weights(tmp_path / "disk"), _weights(tmp_path / "plain")
    assert same_tensors(disk, _weights(tmp_path / "disk-again"))
    assert same_tensors(disk, _weights(tmp_path / "memory"))
    first, last = "model.layers.0.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"
    assert torch.equal(disk[first], plain_weights[first])  # the gradient starts at 0 ...
    change = (disk[last] - plain_weights[last]).std() / plain_weights[last].std()
    assert 0.03 < change < 0.07  # ... and ends at 5% of the tensor's std


def test_a_bad_recipe_is_one_line_and_exit_code_2(write_recipe, tmp_path):
    recipe = write_recipe({"merge_method": "tise", "models": [{"model": "x"}]})
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    methods = ", ".join(sorted(m.spec.name for m in merge_methods.registered_methods()))
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: {recipe}: merge_method: unknown merge method 'tise' (did you mean 'ties'?); expected one of {methods}"]


@pytest.mark.parametrize("where", ["--in-memory", "on disk"])
def test_a_recipe_mergekit_cannot_merge_is_one_line_and_exit_code_2(where, base_model, specialists, write_recipe,
                                                                      tmp_path):
    recipe = _recipe(base_model, specialists)
    del recipe["models"][0]["parameters"]["weight"]
    path = write_recipe(recipe)
    result = CliRunner().invoke(main, ["merge", str(path), str(tmp_path / "out")] + [where] * (where == "--in-memory"))
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if "error" in line]  # beside mergekit's progress bars
    assert line.startswith(f"error: {path}: mergekit cannot merge the recipe: Missing required parameter weight"), line
    assert "Traceback" not in result.output
