"""What is exported is what was scored: every candidate's weights are fingerprinted where they were
scored, and export merges again, compares, and refuses a difference naming the tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from evomerge.cli import main
from evomerge.merge.fingerprint import fingerprint, first_difference
from evomerge.paths import TASKS_DIR
from evomerge.run.store import RunStore


def test_a_fingerprint_changes_with_any_single_value_and_not_with_a_copy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Linear(3, 5)).to(torch.bfloat16)
    same = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Linear(3, 5)).to(torch.bfloat16)
    same.load_state_dict(model.state_dict())
    before = fingerprint(model)
    assert before == fingerprint(same) and len(before) == 3  # 21 and 5 bfloat16 values: words and a tail
    for name, tensor in model.state_dict().items():
        for index in range(tensor.numel()):
            bits = tensor.view(-1).view(torch.int16)  # the value's lowest bit flipped: the least change there is
            bits[index] ^= 1
            assert first_difference(before, fingerprint(model)) == name, (name, index)
            bits[index] ^= 1
    assert fingerprint(model) == before
    assert fingerprint(model, torch.float32) != before  # the dtype is part of what was scored


def _dare_run(zoo: dict, tmp_path: Path, write_recipe) -> tuple:
    """A small dare_ties search (random masks from the device's generator) over copies of three zoo models."""
    models = tmp_path / "zoo"
    for name in ("base", "rev", "sort"):
        shutil.copytree(zoo["dir"] / name, models / name)
    recipe = write_recipe({
        "merge_method": "dare_ties", "base_model": str(models / "base"), "dtype": "float32",
        "models": [{"model": str(models / name), "parameters": {"weight": 0.8, "density": 0.6}} for name in ("rev", "sort")],
        "evomerge": {"seed": 3, "search": [{"parameter": "density", "range": [0.3, 0.9]}],
                     "tasks": [{"name": "zoo_rev_search"}, {"name": "zoo_sort_search"}],
                     "task_paths": [str(TASKS_DIR)], "eval": {"limit": 10},
                     "searcher": {"name": "random"}, "budget": {"evaluations": 3}},
    })
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    return models, run


@pytest.mark.slow
def test_a_dare_ties_winner_exports_the_scored_weights_and_a_changed_parent_is_refused(zoo, tmp_path, write_recipe):
    models, run = _dare_run(zoo, tmp_path, write_recipe)
    store = RunStore.open(run)
    winner = store.evaluations.ranked()[0]
    scored = store.evaluations.fingerprint(winner.id)
    assert winner.device == "cpu" and "model.embed_tokens.weight" in scored

    exported = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "model"), "--quiet"])
    assert exported.exit_code == 0, exported.output
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Scored in `float32` on `cpu`" in card
    assert "Weights merged on `cpu`: their fingerprint matches the weights scored in the search" in card
    on_disk = load_file(tmp_path / "model" / "model.safetensors")
    assert all(scored[name].startswith(f"{list(tensor.shape)} float32") for name, tensor in on_disk.items())

    path = models / "sort" / "model.safetensors"  # the parent changes after the search
    tensors = load_file(path)
    tensors["model.layers.2.mlp.down_proj.weight"] += 0.01
    save_file(tensors, path, metadata={"format": "pt"})
    refused = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "changed"), "--quiet"])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    assert "from tensor model.layers.2.mlp.down_proj.weight on" in refused.output and "--allow-mismatch" in refused.output
    assert not (tmp_path / "changed").exists()
    allowed = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "changed"), "--quiet",
                                        "--allow-mismatch"])
    assert allowed.exit_code == 0, allowed.output
    assert "DIFFER from the weights scored" in (tmp_path / "changed" / "README.md").read_text()
