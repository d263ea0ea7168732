"""Searching routes: every searcher over inclusion and scale genes, the GA's split-point crossover,
and a real routed search whose best.yaml `mergekit-yaml` merges to the weights that were scored."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file
from weights import same_tensors

from evomerge.outputs.export import export_run
from evomerge.outputs.finish import finish_run
from evomerge.outputs.route_plot import describe_route, route_of
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.start import SearchOptions, start_search
from evomerge.run_options import RunOptions
from evomerge.searchers import make_searcher
from evomerge.searchers.operators import SplitPointCrossover, units
from evomerge.searchers.spec import SearcherSpec

SEARCHERS = {
    "cma": {"name": "cma", "popsize": 6},
    "ga-split": {"name": "ga", "population": 6, "elitism": 1, "crossover": "split"},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 6, "startup_trials": 6},
    "optuna-cmaes": {"name": "optuna", "sampler": "cmaes", "batch": 6},
    "random": {"name": "random", "batch": 6},
}


def _recipe(zoo, tasks_dir=None, **evomerge) -> dict:
    models = [str(zoo["dir"] / "pair"), str(zoo["dir"] / "rev")]
    section = {"seed": 5, "search": [{"routing": {"models": models, "repeats": 2, "max_layers": 6, "scale": [0.5, 1.5]}}]}
    if tasks_dir is not None:
        section |= {"tasks": [{"name": "zoo_rev_search"}], "task_paths": [str(tasks_dir)], "eval": {"limit": 20}}
    return {"merge_method": "passthrough", "models": [{"model": models[0]}], "dtype": "float32",
            "evomerge": section | evomerge}


@pytest.fixture
def space(zoo, write_recipe):
    return build_space(load_recipe(write_recipe(_recipe(zoo))))


def test_split_point_children_keep_each_parents_slots_on_their_side_of_one_point(space):
    crossover = SplitPointCrossover(units(space.describe(), space.dimension))
    assert crossover.units == tuple((k, k + len(space.slots)) for k in range(len(space.slots)))  # inclusion + scale
    rng = np.random.default_rng(0)
    points = set()
    for _ in range(10):
        parents = rng.uniform(size=(2, space.dimension))
        child = crossover.crossover(parents, rng)
        side = [0 if np.array_equal(child[list(u)], parents[0][list(u)]) else 1 for u in crossover.units]
        point = side.index(1)
        assert side == [0] * point + [1] * (len(side) - point) and 1 <= point < len(side)
        assert all(np.array_equal(child[list(u)], parents[1][list(u)]) for u in crossover.units[point:])
        points.add(point)
    assert len(points) > 5


def test_genes_without_slots_are_units_of_their_own():
    assert units([{"name": "a"}, {"name": "b", "slot": 0}, {"name": "c", "slot": 0}], 4) == ((0,), (1, 2), (3,))


def _target_fitness(space, target):
    """Minus the number of layers the decoded route takes or leaves unlike `target` (slot indices), as a multiset
    of (model, layer): the fitness sees genes only through the route they decode to."""
    wanted = Counter(space.slots[s] for s in target)

    def fitness(unit):
        taken = Counter((hop.model, hop.layer) for hop in space.route(space.from_unit(unit)))
        return -float(sum(((taken - wanted) + (wanted - taken)).values()))
    return fitness


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_each_searcher_finds_better_routes_than_the_start(name, space):
    target = [4, 5, 9, 14]  # rev 0, rev 1, pair 1 (second repeat), rev 2
    fitness = _target_fitness(space, target)
    searcher = make_searcher(SearcherSpec(**SEARCHERS[name]), space.dimension, space.to_unit(space.x0), seed=1,
                             genes=space.describe())
    start, best, depths = fitness(space.to_unit(space.x0)), -np.inf, set()
    for _ in range(10):
        asked = searcher.ask()
        for proposal in asked:
            value = fitness(proposal.genotype)
            best = max(best, value)
            depths.add(len(space.route(space.from_unit(proposal.genotype))))
            searcher.tell(proposal.id, (value,))
    assert best > start and len(depths) >= 2 and max(depths) <= space.max_layers


def test_optuna_samples_inclusion_genes_as_choices_and_its_cma_es_as_numbers(space):
    for sampler, choices in (("tpe", True), ("cmaes", False)):
        searcher = make_searcher(SearcherSpec(name="optuna", sampler=sampler, batch=4), space.dimension,
                                 space.to_unit(space.x0), seed=0, genes=space.describe())
        inclusion = np.concatenate([p.genotype[: len(space.slots)] for _ in range(6) for p in searcher.ask()])
        assert set(np.unique(inclusion)) <= {0.25, 0.75} if choices else len(np.unique(inclusion)) > 2


def test_a_routed_search_exports_a_best_yaml_that_mergekit_yaml_merges_to_the_scored_weights(zoo, tasks_dir,
                                                                                           write_recipe, tmp_path):
    recipe = write_recipe(_recipe(zoo, tasks_dir, searcher={"name": "ga", "population": 4, "elitism": 1,
                                                             "crossover": "split"}))
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=8, quiet=True))
    search.run()
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    best = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    assert best["merge_method"] == "passthrough" and "slices" in best and report["rows"]
    # refuses weights other than the scored
    exported = export_run(tmp_path / "run", tmp_path / "exported", options=RunOptions(quiet=True))
    hops, _ = route_of((tmp_path / "run" / "best.yaml").read_text())
    page = (tmp_path / "run" / "report.html").read_text()  # written by the export, for the card's fitness plot
    assert (tmp_path / "run" / "route.png").is_file() and describe_route(hops) in page and "merge_method: passthrough" in page
    card = (exported / "README.md").read_text()
    assert (exported / "route.png").is_file() and "](route.png)" in card and describe_route(hops) in card
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(tmp_path / "run" / "best.yaml"), str(tmp_path / "cli")],
                   check=True, capture_output=True)
    assert same_tensors(load_file(tmp_path / "cli" / "model.safetensors"), load_file(exported / "model.safetensors"))
