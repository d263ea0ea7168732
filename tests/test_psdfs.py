"""PS+DFS as one search: a multi-stage recipe whose first stage is a parameter-space merge and whose final
merge is a layer route over [that stage's output, the parents]. One genotype holds both (the stage's genes
first, the route's after); the stage's output stays resident and is re-merged only when its own genes
change; the route copies layers from it and from the parents; the candidate is mergekit-multi's recipe."""

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

from evomerge.errors import EvomergeError
from evomerge.merge.routed_model import search_materializer
from evomerge.outputs.export import export_run
from evomerge.outputs.finish import finish_run
from evomerge.outputs.route_plot import route_of
from evomerge.paths import TASKS_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.route import Hop
from evomerge.recipe.routing import RoutingSpace
from evomerge.recipe.space_factory import build_space
from evomerge.recipe.validate import check_search
from evomerge.run.memory_plan import make_plan
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

torch.set_num_threads(1)


def _route(zoo, **evomerge) -> dict:
    """The final merge starts as the blend's own layers; the route may take the blend's and the parents'."""
    folder = zoo["dir"]
    routing = {"models": ["blend", str(folder / "pair"), str(folder / "rev")], "max_layers": 6, "scale": [0.5, 1.5]}
    return {"merge_method": "passthrough", "models": [{"model": "blend"}], "dtype": "float32",
            "evomerge": {"seed": 3, "search": [
                {"parameter": "weight", "stage": "blend", "range": [0, 1], "layer_groups": 2},
                {"routing": routing}], **evomerge}}


def _space(tmp_path, zoo, **evomerge) -> RoutingSpace:
    space = build_space(load_recipe(write_documents(tmp_path / "psdfs.yaml", blend(zoo), _route(zoo, **evomerge))))
    assert isinstance(space, RoutingSpace)
    return space


def _mergekit_multi(recipe: Path, out: Path, seed: int) -> None:
    """mergekit-multi's own command (its click entry point, in process), as a user runs it on best.yaml."""
    arguments = [str(recipe), "--out-path", str(out), "-I", str(out.parent / f"{out.name}-stages"),
                 "--random-seed", str(seed), "--quiet"]
    result = CliRunner().invoke(multimerge.main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _with(space: RoutingSpace, x: np.ndarray, hops) -> np.ndarray:
    """x with its route genes set to take exactly these (model, layer) slots, unscaled."""
    x = x.copy()
    count = len(space.slots)
    x[space.offset: space.offset + count] = -1.0
    for hop in hops:
        x[space.offset + space.slots.index(hop)] = 1.0
    x[space.offset + count:] = 1.0
    return x


def test_one_genotype_holds_the_stages_genes_then_the_routes(zoo, tmp_path):
    space = _space(tmp_path, zoo)
    pair, rev = str(zoo["dir"] / "pair"), str(zoo["dir"] / "rev")
    assert space.offset == 4 and len(space.slots) == 12 and space.dimension == 4 + 24
    assert [g.name for g in space.genes[:4]] == ["blend/weight[pair]@0", "blend/weight[pair]@1",
                                                 "blend/weight[rev]@0", "blend/weight[rev]@1"]
    assert space.genes[4].name == "include[blend:0]" and space.slots[4] == (pair, 0)
    assert list(space.x0[:4]) == [0.6, 0.6, 0.4, 0.4]  # the blend's own values
    assert space.route(space.x0) == [Hop("blend", i, 1.0) for i in range(4)]  # the final document's own route
    described = space.describe()
    assert "slot" not in described[0] and described[4]["slot"] == 0 and described[4]["binary"]

    x = _with(space, space.upper, [("blend", 0), (pair, 3), (rev, 1), (rev, 2)])  # in slot order
    candidate = space.decode(x)
    documents = list(yaml.safe_load_all(candidate.to_yaml()))
    assert [d.get("name") for d in documents] == ["blend", None] and candidate.reads == ("blend",)
    assert documents[0]["models"][0]["parameters"]["weight"] == [1.0, 1.0]  # the stage's genes
    assert [(s["sources"][0]["model"], s["sources"][0]["layer_range"]) for s in documents[1]["slices"]] == [
        ("blend", [0, 1]), (pair, [3, 4]), (rev, [1, 3]), ("blend", [0, 0])]  # embeddings, norm and head: blend's
    assert route_of(candidate.to_yaml()) == (space.route(x), "blend")
    again = load_recipe(tmp_path / "again.yaml", text=candidate.to_yaml())  # as export reads a stored recipe
    assert [s.merge for s in again.stages] == [s.merge for s in candidate.stages]


def test_a_route_that_reads_no_earlier_stage_is_a_one_stage_recipe(zoo, tmp_path):
    rev = str(zoo["dir"] / "rev")
    final = _route(zoo) | {"base_model": rev}
    final["evomerge"]["search"][1]["routing"]["embeddings_from"] = rev
    space = build_space(load_recipe(write_documents(tmp_path / "psdfs.yaml", blend(zoo), final)))
    assert space.route(space.x0) == [Hop("blend", i, 1.0) for i in range(4)]
    candidate = space.decode(_with(space, space.x0, [(rev, 0), (rev, 3)]))
    assert candidate.before == () and candidate.reads == ()
    assert len(list(yaml.safe_load_all(candidate.to_yaml()))) == 1  # what mergekit-yaml merges as it is


def test_drawn_candidates_of_several_depths_have_mergekit_multis_weights(zoo, tmp_path):
    space = _space(tmp_path, zoo)
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    rng = np.random.default_rng(4)
    depths = set()
    count = len(space.slots)
    for k, depth in enumerate([2, 4, 6]):
        x = rng.uniform(space.lower, space.upper)  # the blend's genes, the route's scales
        include = np.zeros(count, dtype=bool)
        include[[0, *rng.choice(np.arange(1, count), depth - 1, replace=False)]] = True  # the blend's layer 0 and more
        x[space.offset: space.offset + count] = np.where(include, rng.uniform(0.01, 1, count), rng.uniform(-1, -0.01, count))
        candidate = space.decode(x)
        assert candidate.reads == ("blend",)
        materializer.materialize(candidate)
        best = tmp_path / f"best-{k}.yaml"
        best.write_text(candidate.to_yaml())
        _mergekit_multi(best, tmp_path / str(k), seed=candidate.seed)
        assert_same_as_resident(load_file(tmp_path / str(k) / "model.safetensors"), materializer.model)
        depths.add(materializer.model.config.num_hidden_layers)
    assert depths == {2, 4, 6}


def test_changing_only_route_genes_does_not_re_merge_the_first_stage(zoo, tmp_path):
    space = _space(tmp_path, zoo)
    pair, rev = str(zoo["dir"] / "pair"), str(zoo["dir"] / "rev")
    materializer = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    x = _with(space, space.x0, [("blend", 0), ("blend", 1), (rev, 2), ("blend", 3)])
    first = materializer.materialize(space.decode(x))
    assert first.stages["blend"].recomputed == first.stages["blend"].total

    x = _with(space, x, [("blend", 0), (pair, 1), ("blend", 2), (rev, 3), (rev, 0)])  # the route only
    stats = materializer.materialize(space.decode(x))
    assert stats.stages["blend"].recomputed == 0 and stats.stages[None].recomputed > 0

    x[0] = 0.1  # blend/weight[pair]@0: the blend's first layers change, and the route's copies of them
    stats = materializer.materialize(space.decode(x))
    rewritten = stats.stages["blend"].written
    assert 0 < len(rewritten) < stats.stages["blend"].total
    assert "model.layers.0.self_attn.q_proj.weight" in rewritten and "model.layers.3.mlp.up_proj.weight" not in rewritten
    blend_layer = {"0": "0", "1": "2"}  # output layers 0 and 1 are the blend's 0 and 2; 2-4 are pair's and rev's

    def source(name: str) -> str:
        parts = name.split(".")
        if name.startswith("model.layers."):
            if parts[2] not in blend_layer:
                return ""
            parts[2] = blend_layer[parts[2]]
        return ".".join(parts)  # embeddings, final norm and head: the blend's
    names = materializer.model.state_dict().keys()
    assert set(stats.stages[None].written) == {name for name in names if source(name) in rewritten}

    fresh = search_materializer(space, options=RunOptions(device="cpu", quiet=True))
    fresh.materialize(space.decode(x))
    incremental = materializer.model.state_dict()
    assert all(torch.equal(tensor, incremental[name]) for name, tensor in fresh.model.state_dict().items())


def test_the_docs_example_is_checked_and_sized_with_the_blend_resident(zoo, tmp_path):
    guide = (Path(__file__).parent.parent / "docs" / "guides" / "data-flow.md").read_text()
    section = guide[guide.index("## PS+DFS"):]
    text = section[section.index("```yaml") + len("```yaml"): section.index("```\n", section.index("```yaml") + 7)]
    path = tmp_path / "psdfs.yaml"
    path.write_text(text.replace("zoo/", f"{zoo['dir']}/") + "  tasks: [{name: zoo_rev_search}]\n"
                    f"  task_paths: [{TASKS_DIR}]\n  budget: {{evaluations: 4}}\n")
    recipe = load_recipe(path)
    space = check_search(recipe).space  # every check that needs nothing loaded, the blend's parents included
    assert isinstance(space, RoutingSpace) and space.offset == 4 and space.reads == ("blend",)
    planned = make_plan(recipe, device="cpu").weights
    alone = make_plan(load_recipe(write_documents(tmp_path / "route.yaml", {
        "merge_method": "passthrough", "models": [{"model": str(zoo["dir"] / "pair")}], "dtype": "float32",
        "evomerge": {"search": [{"routing": {"models": [str(zoo["dir"] / m) for m in ("pair", "rev")],
                                             "max_layers": 6}}]}})), device="cpu").weights
    assert planned.config.num_hidden_layers == 6 and sorted(planned.parents) == sorted([*alone.parents,
        str(zoo["dir"] / "base")])
    assert planned.output > alone.output  # the blend's output model is resident beside the route's


@pytest.mark.parametrize("change, key, message", [
    (lambda r: r["evomerge"]["search"][0].pop("stage"), "search[0].stage", "the final merge is the routing block's"),
    (lambda r: r["evomerge"]["search"].append(dict(r["evomerge"]["search"][1])), "search[2]", "a second routing block"),
    (lambda r: r["evomerge"].update(noise={"range": [0, 0.01]}), "search", "no noise"),
])
def test_a_malformed_psdfs_recipe_is_refused_in_one_line(change, key, message, zoo, tmp_path):
    recipe = _route(zoo)
    change(recipe)
    path = write_documents(tmp_path / "psdfs.yaml", blend(zoo), recipe)
    with pytest.raises(EvomergeError) as raised:
        build_space(load_recipe(path))
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and key in text and message in text and "\n" not in text


@pytest.mark.slow
def test_a_joint_search_exports_a_best_yaml_that_mergekit_multi_merges_to_the_scored_weights(zoo, tasks_dir, tmp_path):
    """The real loop, scorer and store: the search scores PS+DFS candidates, `export` checks the winner's
    weights against the scored fingerprint, and mergekit-multi on best.yaml writes those weights."""
    final = _route(zoo, tasks=[{"name": "zoo_rev_search"}], task_paths=[str(tasks_dir)], eval={"limit": 10},
                   searcher={"name": "ga", "population": 4, "elitism": 1, "crossover": "split"})
    search = start_search(write_documents(tmp_path / "psdfs.yaml", blend(zoo), final), tmp_path / "run",
                          SearchOptions(evaluations=6, quiet=True))
    search.run()
    # the parents, the starting point and the winner scored on the resident model
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    assert [row["role"] for row in report["rows"]].count("parent") == 2
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert [e.status for e in evaluations] == ["ok"] * 6
    assert any(len(list(yaml.safe_load_all(e.recipe))) == 2 for e in evaluations)  # routes through the blend
    assert len({tuple(e.genotype[:4]) for e in evaluations}) > 1  # the blend's genes searched with the route's
    best = tmp_path / "run" / "best.yaml"
    # refuses weights other than the scored
    exported = export_run(tmp_path / "run", tmp_path / "exported", options=RunOptions(quiet=True))
    assert (exported / "mergekit_config.yml").read_text() == best.read_text()
    hops, _ = route_of(best.read_text())  # the final document's route, however many documents
    assert 1 <= len(hops) <= 6 and (exported / "route.png").is_file()
    assert "](route.png)" in (exported / "README.md").read_text()
    _mergekit_multi(best, tmp_path / "mergekit", seed=3)
    assert same_tensors(load_file(tmp_path / "mergekit" / "model.safetensors"),
                        load_file(exported / "model.safetensors"))
