"""`evomerge export`: the chosen candidate as a Hugging Face folder with a model card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from mergekit.common import ModelReference
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from weights import assert_same_as_resident, same_tensors

from evomerge.cli import main
from evomerge.merge.materializer import Materializer
from evomerge.outputs.export import candidate_of, model_card
from evomerge.outputs.finish import finish_run
from evomerge.recipe.candidate import Candidate
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions
from evomerge.zoo.recipe import write_demo_recipe

pytestmark = pytest.mark.slow  # each test merges through mergekit on disk; the module runs two searches


def _finished_run(directory: Path, zoo: dict, **evomerge) -> Path:
    recipe = write_demo_recipe(directory, zoo["dir"], eval={"limit": 20},
                               searcher={"name": "ga", "population": 4, "elitism": 1}, **evomerge)
    search = start_search(recipe, directory / "run", SearchOptions(evaluations=8, quiet=True))
    search.run()
    finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    return directory / "run"


@pytest.fixture(scope="module")
def run_dir(zoo, tmp_path_factory) -> Path:
    """One finished GA run of the demo, shared by this module's tests (they only read it)."""
    return _finished_run(tmp_path_factory.mktemp("plain"), zoo)


@pytest.fixture(scope="module")
def noisy_run_dir(zoo, tmp_path_factory) -> Path:
    return _finished_run(tmp_path_factory.mktemp("noisy"), zoo, noise={"range": [0.001, 0.02]}, confirm=None)


def _export(run_dir: Path, out: Path, *args) -> str:
    result = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _front_matter(card: str) -> dict:
    _, front, _ = card.split("---\n", 2)
    return yaml.safe_load(front)


def _in_memory(run_dir: Path, rank: int = 1) -> torch.nn.Module:
    """The resident model of the run's candidate of that rank."""
    store = RunStore.open(run_dir)
    candidate = candidate_of(store, store.confirmations.standings()[rank - 1])
    materializer = Materializer(candidate.merge, options=RunOptions(quiet=True))
    materializer.materialize(candidate)
    return materializer.model


def test_the_winner_exports_as_a_loadable_folder_with_a_model_card(run_dir, tmp_path):
    out = tmp_path / "model"
    _export(run_dir, out)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "mergekit_config.yml", "README.md", "fitness.png"):
        assert (out / name).is_file(), name
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert_same_as_resident(load_file(out / "model.safetensors"), _in_memory(run_dir))

    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["tags"] == ["merge", "mergekit", "evomerge"] and front["library_name"] == "transformers"
    assert "base_model" not in front  # only Hub ids go there; local parents are named in the text
    assert all(f"  - `{name}`" in card for name in ("base", "pair", "rev", "shift", "sort"))
    winner = RunStore.open(run_dir).confirmations.standings()[0]
    for expected in ("Task Arithmetic (`task_arithmetic`)", "Searcher: `ga`", "Budget: 8 evaluations",
                     f"evaluation #{winner.id}", "![fitness over the search](fitness.png)",
                     "| starting point | start |", "| winner (#", "mergekit-yaml mergekit_config.yml"):
        assert expected in card, expected


def test_mergekit_yaml_reproduces_the_exported_weights_from_the_card_recipe(run_dir, tmp_path):
    _export(run_dir, tmp_path / "model")
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(tmp_path / "model" / "mergekit_config.yml"), str(tmp_path / "again")],
                   check=True, capture_output=True)
    again, exported = (load_file(tmp_path / folder / "model.safetensors") for folder in ("again", "model"))
    assert same_tensors(again, exported)


def test_noise_is_exported_and_evomerge_merge_reproduces_it(noisy_run_dir, tmp_path):
    run_dir = noisy_run_dir
    _export(run_dir, tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "evomerge merge mergekit_config.yml" in card
    exported = load_file(tmp_path / "model" / "model.safetensors")
    assert_same_as_resident(exported, _in_memory(run_dir))
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "model" / "mergekit_config.yml"), str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert same_tensors(load_file(tmp_path / "again" / "model.safetensors"), exported)


def test_rank_chooses_another_candidate(run_dir, tmp_path):
    _export(run_dir, tmp_path / "second", "--rank", "2")
    second = RunStore.open(run_dir).confirmations.standings()[1]
    assert f"evaluation #{second.id} (generation {second.generation}, rank 2" in (tmp_path / "second" / "README.md").read_text()
    assert_same_as_resident(load_file(tmp_path / "second" / "model.safetensors"), _in_memory(run_dir, rank=2))
    result = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "x"), "--rank", "99"])
    assert result.exit_code == 2 and "--rank: expected a rank from 1 to 8" in result.output


def test_push_to_hub_uploads_the_exported_folder(run_dir, hub, without_xet, tmp_path):
    output = _export(run_dir, tmp_path / "model", "--push-to-hub", "someone/evomerge-demo", "--private")
    assert "pushed to" in output
    [create] = hub.requests_to("POST", "/api/repos/create")
    assert create.json()["visibility"] == "private"
    sent = hub.files["someone/evomerge-demo"]
    assert sent == {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir() if p.is_file()}


def test_the_card_links_hub_parents_and_names_local_ones_in_its_text(run_dir):
    store = RunStore.open(run_dir)
    evaluation = store.evaluations.ranked()[0]
    merge = candidate_of(store, evaluation).merge.model_copy(deep=True)
    merge.base_model = ModelReference.parse("HuggingFaceTB/SmolLM2-135M")
    card = model_card(store, evaluation, Candidate(merge=merge, seed=0), rank=1)
    assert _front_matter(card)["base_model"] == ["HuggingFaceTB/SmolLM2-135M"]
    assert "  - `HuggingFaceTB/SmolLM2-135M`" in card and "  - `rev`" in card


def test_a_tied_embedding_model_searches_merges_and_exports_tied_as_mergekit_writes_it(tied_zoo, tmp_path):
    run = _finished_run(tmp_path, tied_zoo)
    _export(run, tmp_path / "model")
    exported = load_file(tmp_path / "model" / "model.safetensors")
    assert "lm_head.weight" not in exported
    assert_same_as_resident(exported, _in_memory(run))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "model" / "mergekit_config.yml"), str(tmp_path / "again"),
                                       "--in-memory"])
    assert result.exit_code == 0, result.output
    assert same_tensors(load_file(tmp_path / "again" / "model.safetensors"), exported)
