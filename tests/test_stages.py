"""Multi-stage recipes in mergekit-multi's format: several YAML documents, later ones naming earlier
ones as a model. Genes sit in any stage (the stage's name starts the gene's name); candidates are
merged in memory stage after stage, an earlier stage's output resident and re-merged only when its
own genes change; the candidate's recipe (best.yaml) runs with mergekit-multi to the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mergekit.scripts import multimerge
from safetensors.torch import load_file
from stage_recipes import blend, write_documents
from weights import assert_same_as_resident, same_tensors

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.merge.multi_stage import materializer_for
from evomerge.merge.write import write_with_mergekit
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

torch.set_num_threads(1)


def _final(zoo, **evomerge) -> dict:
    folder = zoo["dir"]
    return {"merge_method": "ties", "base_model": str(folder / "base"),
            "models": [{"model": "blend", "parameters": {"weight": 0.7, "density": 0.8}},
                       {"model": str(folder / "sort"), "parameters": {"weight": 0.5, "density": 0.6}}],
            "dtype": "float32",
            "evomerge": {"seed": 3, "search": [
                {"parameter": "weight", "stage": "blend", "range": [0, 1], "layer_groups": 2},
                {"parameter": "weight", "range": [0, 1]},
                {"parameter": "density", "models": ["blend"], "range": [0.3, 1]}], **evomerge}}


def _mergekit_multi(recipe: Path, out: Path, seed: int) -> None:
    """mergekit-multi's own command (its click entry point, in process), as a user runs it on best.yaml."""
    arguments = [str(recipe), "--out-path", str(out), "-I", str(out.parent / f"{out.name}-stages"),
                 "--random-seed", str(seed), "--quiet"]
    result = CliRunner().invoke(multimerge.main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_genes_sit_in_any_stage_and_a_candidate_is_mergekit_multis_recipe(zoo, tmp_path):
    recipe = load_recipe(write_documents(tmp_path / "stages.yaml", blend(zoo), _final(zoo)))
    assert [(s.name, s.reads) for s in recipe.stages] == [("blend", ()), (None, ("blend",))]
    space = build_space(recipe)
    assert [g.name for g in space.genes] == ["blend/weight[pair]@0", "blend/weight[pair]@1", "blend/weight[rev]@0",
                                             "blend/weight[rev]@1", "weight[blend]", "weight[sort]", "density[blend]"]
    assert list(space.x0) == [0.6, 0.6, 0.4, 0.4, 0.7, 0.5, 0.8]  # each stage's own values
    candidate = space.decode(space.upper)
    documents = list(yaml.safe_load_all(candidate.to_yaml()))
    assert documents[0]["name"] == "blend" and documents[0]["models"][0]["parameters"]["weight"] == [1.0, 1.0]
    assert documents[1]["models"][0] == {"model": "blend", "parameters": {"weight": 1.0, "density": 1.0}}
    assert "name" not in documents[1] and documents[1]["evomerge"] == {"seed": 3}
    again = load_recipe(tmp_path / "again.yaml", text=candidate.to_yaml())  # as export reads a stored recipe
    assert [s.merge for s in again.stages] == [s.merge for s in candidate.stages]
    assert [str(p) for p in candidate.parents()] == sorted(str(zoo["dir"] / m) for m in ("pair", "rev", "base", "sort"))


def test_mergekit_multi_runs_the_recipe_and_a_candidate_to_the_in_memory_weights(zoo, tmp_path):
    path = write_documents(tmp_path / "stages.yaml", blend(zoo), _final(zoo))
    space = build_space(load_recipe(path))
    materializer = materializer_for(space.starting_point(), options=RunOptions(quiet=True))
    materializer.materialize(space.starting_point())
    _mergekit_multi(path, tmp_path / "start", seed=3)  # the recipe file as it is, `evomerge:` section and all
    assert_same_as_resident(load_file(tmp_path / "start" / "model.safetensors"), materializer.model)

    candidate = space.decode(np.random.default_rng(1).uniform(space.lower, space.upper))
    best = tmp_path / "best.yaml"
    best.write_text(candidate.to_yaml())
    materializer.materialize(candidate)
    _mergekit_multi(best, tmp_path / "best", seed=candidate.seed)
    assert_same_as_resident(load_file(tmp_path / "best" / "model.safetensors"), materializer.model)


def test_a_stage_is_re_merged_only_when_its_genes_or_what_it_reads_change(zoo, tmp_path):
    space = build_space(load_recipe(write_documents(tmp_path / "stages.yaml", blend(zoo), _final(zoo))))
    x = space.x0.copy()
    materializer = materializer_for(space.decode(x), options=RunOptions(quiet=True))
    materializer.materialize(space.decode(x))

    x[5] = 0.9  # weight[sort]: the final stage only
    stats = materializer.materialize(space.decode(x))
    assert stats.stages["blend"].recomputed == 0
    assert stats.stages[None].recomputed == stats.stages[None].total

    x[0] = 0.1  # blend/weight[pair]@0: the first layers' end of the gradient, in the first stage
    stats = materializer.materialize(space.decode(x))
    rewritten = set(stats.stages["blend"].written)
    assert 0 < len(rewritten) < stats.stages["blend"].total
    assert set(stats.stages[None].written) == rewritten  # each final tensor reads the blend's tensor of its name

    fresh = materializer_for(space.decode(x), options=RunOptions(quiet=True))
    fresh.materialize(space.decode(x))
    incremental = materializer.model.state_dict()
    assert all(torch.equal(tensor, incremental[name]) for name, tensor in fresh.model.state_dict().items())


def test_frankenmerged_stages_feed_a_slerp_on_the_tied_zoo(tied_zoo, tmp_path):
    """Two passthrough `slices:` stages (6 layers from 4) read by a SLERP whose t gradient counts the
    stages' 6 layers; the tied zoo's embeddings and grouped-query attention pass through both stages."""
    folder = tied_zoo["dir"]

    def frankenmerge(name, first, second):
        return {"name": name, "merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": str(folder / first), "layer_range": [0, 4]}]},
            {"sources": [{"model": str(folder / second), "layer_range": [2, 4]}]}]}

    final = {"merge_method": "slerp", "base_model": "tall", "models": [{"model": "tall"}, {"model": "wide"}],
             "parameters": {"t": 0.5}, "dtype": "float32",
             "evomerge": {"seed": 1, "search": [{"parameter": "t", "range": [0, 1], "layer_groups": [[0, 2], [2, 6]]}]}}
    recipe = load_recipe(write_documents(tmp_path / "stages.yaml", frankenmerge("tall", "pair", "rev"), final,
                                frankenmerge("wide", "sort", "shift")))
    assert [s.name for s in recipe.stages] == ["tall", "wide", None]  # merge order: what a stage reads comes first
    space = build_space(recipe)
    candidate = space.decode([0.2, 0.9])
    materializer = materializer_for(candidate, options=RunOptions(quiet=True))
    materializer.materialize(candidate)
    assert materializer.model.config.num_hidden_layers == 6
    write_with_mergekit(candidate, tmp_path / "mergekit")  # mergekit-multi's own loading and task graph
    assert_same_as_resident(load_file(tmp_path / "mergekit" / "model.safetensors"), materializer.model)


def _cycle(zoo):
    a, b = blend(zoo), {**blend(zoo), "name": "other"}
    a["models"][1]["model"], b["models"][1]["model"] = "other", "blend"
    return a, b, _final(zoo)


@pytest.mark.parametrize("documents, key, message", [
    (lambda zoo: (blend(zoo), {**_final(zoo), "models": [{"model": "blnd"}, _final(zoo)["models"][1]]}),
     "documents[1].models[0].model", "unknown stage 'blnd' (did you mean 'blend'?)"),
    (_cycle, "documents[1].name", "stages blend -> other -> blend merge each other in a cycle"),
    (lambda zoo: (blend(zoo), blend(zoo), _final(zoo)), "documents[1].name", "duplicate stage name 'blend'"),
    (lambda zoo: (blend(zoo), {k: v for k, v in _final(zoo).items() if k != "evomerge"}, _final(zoo)),
     "documents[2]", "a second unnamed document"),
    (lambda zoo: ({**blend(zoo), "evomerge": {}}, _final(zoo)), "documents[1].evomerge", "a second `evomerge:` section"),
    (lambda zoo: ({**blend(zoo), "name": "spare"}, blend(zoo), _final(zoo)), "documents[0].name",
     "stage 'spare' is merged by no other stage, nor is the unnamed document"),
    (lambda zoo: (blend(zoo), _final(zoo, search=[{"parameter": "weight", "stage": "blnd", "range": [0, 1]}])),
     "evomerge.search[0].stage", "unknown stage 'blnd' (did you mean 'blend'?); expected one of blend"),
    (lambda zoo: ({**blend(zoo), "name": "a/b"}, _final(zoo)), "documents[0].name", "expected a stage name"),
], ids=["unknown-stage", "cycle", "duplicate", "two-unnamed", "two-sections", "two-finals", "gene-stage", "name"])
def test_a_malformed_multi_stage_recipe_is_refused_in_one_line(documents, key, message, zoo, tmp_path):
    path = write_documents(tmp_path / "stages.yaml", *documents(zoo))
    with pytest.raises(EvomergeError) as raised:
        load_recipe(path)
    error = raised.value
    assert (error.path, error.key) == (str(path), key) and message in error.message, str(error)
    assert "\n" not in str(error)


@pytest.mark.slow
def test_a_search_stores_multi_stage_recipes_and_exports_what_mergekit_multi_merges(zoo, tasks_dir, tmp_path):
    """The real loop, scorer and store on a two-stage recipe: best.yaml is mergekit-multi's documents, and
    `evomerge export` (which checks the scored weights' fingerprint) writes what mergekit-multi merges from it."""
    final = _final(zoo, tasks=[{"name": "zoo_pair_search"}], task_paths=[str(tasks_dir)], eval={"limit": 10},
                   searcher={"name": "cma", "popsize": 4}, budget={"evaluations": 4})
    search = start_search(write_documents(tmp_path / "stages.yaml", blend(zoo), final), tmp_path / "run",
                          SearchOptions(quiet=True))
    search.run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert [e.status for e in evaluations] == ["ok"] * 4
    best = tmp_path / "run" / "best.yaml"
    assert [d.get("name") for d in yaml.safe_load_all(best.read_text())] == ["blend", None]
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exported"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exported" / "mergekit_config.yml").read_text() == best.read_text()
    _mergekit_multi(best, tmp_path / "mergekit", seed=3)
    assert same_tensors(load_file(tmp_path / "mergekit" / "model.safetensors"),
                        load_file(tmp_path / "exported" / "model.safetensors"))
