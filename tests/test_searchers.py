"""Interchangeable searchers: each one drives a real search on the zoo, is rebuilt exactly by
replaying what it was asked and told, and only the recipe (or --searcher) chooses it."""

from __future__ import annotations

import json
import logging

import numpy as np
import optuna
import pytest

from evomerge.errors import EvomergeError
from evomerge.outputs.finish import finish_run
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions
from evomerge.searchers import SEARCHERS, Proposal, Searcher, SearcherOptions, make_searcher, register
from evomerge.searchers.spec import SearcherSpec

CONFIGS = {
    "cma": {"name": "cma", "popsize": 4},
    "ga-tournament-blend": {"name": "ga", "population": 4, "elitism": 1},
    "ga-roulette-uniform": {"name": "ga", "population": 4, "elitism": 1, "selection": "roulette", "crossover": "uniform"},
    "ga-differential": {"name": "ga", "population": 4, "differential": {"f": 0.4, "cr": 0.6}},
    "ga-succession": {"name": "ga", "population": 4, "elitism": 1, "succession": {"step": 0.5, "decay": 0.95}},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 4, "startup_trials": 4},
    "optuna-cmaes": {"name": "optuna", "sampler": "cmaes", "batch": 4},
    "optuna-nsga2": {"name": "optuna", "sampler": "nsga2", "batch": 4},
    "random": {"name": "random", "batch": 4},
    "ga-steady": {"name": "ga", "population": 4, "steady": True},
    "ga-steady-differential": {"name": "ga", "population": 4, "steady": True, "differential": {"f": 0.4, "cr": 0.6}},
    "qd": {"name": "qd", "batch": 4, "measures": ["zoo_pair_search", "zoo_rev_search"]},
}


def _sphere(proposal) -> tuple:
    return (-float(np.sum((proposal.genotype - 0.3) ** 2)),)


def _scores(proposal) -> dict:
    """Per-task scores for the searchers that read them (qd's measures): the first two genes."""
    return {"zoo_pair_search": float(proposal.genotype[0]), "zoo_rev_search": float(proposal.genotype[1])}


def _tell(searcher, proposals, fitnesses) -> None:
    for proposal, fitness in zip(proposals, fitnesses):
        searcher.tell(proposal.id, fitness)


def _round(searcher, rng=None, log=None) -> list:
    """Ask until the searcher waits, then tell every result (shuffled by `rng`); `log` records the calls."""
    asked = []
    while len(asked) < 8 and (proposals := searcher.ask()):
        asked += proposals
        if log is not None:
            log.append(("ask", [p.id for p in proposals]))
    order = list(asked) if rng is None else [asked[i] for i in rng.permutation(len(asked))]
    for proposal in order:
        searcher.tell(proposal.id, _sphere(proposal), _scores(proposal))
        if log is not None:
            log.append(("tell", proposal))
    return asked


def test_every_searcher_is_configured_here():
    # llm needs an endpoint: tests/test_llm_searcher.py drives it against a fake one
    assert {c["name"] for c in CONFIGS.values()} | {"llm"} == set(SEARCHERS)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_searcher_scores_the_start_recipe_first(config):
    """The crown's baseline: a candidate replaces the start only if it beats the start's own scores."""
    x0 = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
    searcher = make_searcher(SearcherSpec(**CONFIGS[config]), dimension=5, x0=x0, seed=11)
    assert np.array_equal(searcher.ask()[0].genotype, x0)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_fresh_searcher_that_replays_the_asks_and_tells_continues_exactly(config):
    make = lambda: make_searcher(SearcherSpec(**CONFIGS[config]), dimension=5, x0=np.full(5, 0.5), seed=11)
    searcher, log, rng = make(), [], np.random.default_rng(0)
    for _ in range(3):
        _round(searcher, rng, log)  # results arrive in any order
    replayed = make()
    for kind, what in log:
        if kind == "ask":
            assert [p.id for p in replayed.ask()] == what
        else:
            replayed.tell(what.id, _sphere(what), _scores(what))
    for _ in range(2):
        original, again = _round(searcher), _round(replayed)
        assert [p.id for p in original] == [p.id for p in again] and original
        assert all(np.array_equal(a.genotype, b.genotype) for a, b in zip(original, again))


@pytest.mark.parametrize("config", ["cma", "ga-tournament-blend", "ga-differential", "qd"])
def test_a_generational_searcher_learns_the_same_whatever_order_its_results_arrive_in(config):
    make = lambda: make_searcher(SearcherSpec(**CONFIGS[config]), dimension=5, x0=np.full(5, 0.5), seed=3)
    in_order, shuffled = make(), make()
    for generation in range(3):
        first = _round(in_order)
        again = _round(shuffled, np.random.default_rng(generation))
        assert all(np.array_equal(a.genotype, b.genotype) for a, b in zip(first, again))
    assert all(np.array_equal(a.genotype, b.genotype) for a, b in zip(in_order.ask(), shuffled.ask()))


def test_a_generational_searcher_waits_for_its_whole_generation_and_a_steady_one_does_not():
    cma = make_searcher(SearcherSpec(name="cma", popsize=4), dimension=3, x0=np.full(3, 0.5), seed=0)
    generation = cma.ask()
    _tell(cma, generation[:3], [_sphere(p) for p in generation[:3]])
    assert cma.ask() == []  # one result is still out
    cma.tell(generation[3].id, _sphere(generation[3]))
    assert len(cma.ask()) == 4
    steady = make_searcher(SearcherSpec(name="ga", population=4, steady=True), dimension=3, x0=np.full(3, 0.5), seed=0)
    initial = [steady.ask()[0] for _ in range(4)]
    assert [p.operator for p in initial] == ["start", "init", "init", "init"]
    assert steady.ask() == []  # nothing to breed from yet
    _tell(steady, initial[:2], [_sphere(p) for p in initial[:2]])
    [child] = steady.ask()  # two results are enough, while two are still out
    assert set(child.parents) <= {initial[0].id, initial[1].id}
    worst = min(steady.population, key=lambda i: i.fitness)
    steady.tell(child.id, (worst.fitness + 1.0,))
    assert child.id in {i.id for i in steady.population} and worst.id not in {i.id for i in steady.population}


def test_told_twice_or_never_asked_is_an_error():
    searcher = make_searcher(SearcherSpec(name="random", batch=2), dimension=2, x0=np.full(2, 0.5), seed=0)
    [proposal] = searcher.ask()
    searcher.tell(proposal.id, (1.0,))
    with pytest.raises(ValueError, match="was not asked or was told already"):
        searcher.tell(proposal.id, (1.0,))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_searcher_runs_a_real_search_and_resumes_after_a_truncated_generation(config, demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 20}, searcher=CONFIGS[config], noise={"range": [0.0, 0.02]})
    start_search(recipe, tmp_path / "whole", SearchOptions(evaluations=10, quiet=True)).run()
    start_search(recipe, tmp_path / "stopped", SearchOptions(evaluations=6, quiet=True)).run()
    resume_search(tmp_path / "stopped", RunOptions(quiet=True), evaluations=10).run()
    whole = RunStore.open(tmp_path / "whole").evaluations.finished()
    resumed = RunStore.open(tmp_path / "stopped").evaluations.finished()
    assert [(e.genotype, e.fitness, e.parents, e.operator) for e in resumed] == \
           [(e.genotype, e.fitness, e.parents, e.operator) for e in whole]
    assert len(whole) == 10 and all(e.ok for e in whole)
    assert all(len(e.genotype) == 9 for e in whole)  # 8 weights and the noise gene
    assert all("noise" in e.recipe for e in whole if e.genotype[-1] > 0)


def test_the_genetic_algorithm_records_lineage(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 20}, searcher={"name": "ga", "population": 5, "elitism": 2})
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=14, quiet=True)).run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    first = evaluations[:5]
    assert [e.operator for e in first] == ["start"] + ["init"] * 4 and all(not e.parents for e in first)
    children = evaluations[5:]
    assert all(e.parents and e.operator in ("blend+mutation", "mutation") for e in children)
    assert all(parent < child.id for child in children for parent in child.parents)
    assert all(len(e.parents) == (2 if e.operator == "blend+mutation" else 1) for e in children)


@pytest.mark.parametrize("config", ["ga-tournament-blend", "ga-roulette-uniform", "ga-steady"])
def test_the_genetic_algorithm_never_spends_an_evaluation_on_a_copy_of_a_parent(config):
    searcher = make_searcher(SearcherSpec(**CONFIGS[config]), dimension=4, x0=np.full(4, 0.5), seed=0)
    genotypes = {}
    for _ in range(12):
        for proposal in _round(searcher):
            genotypes[proposal.id] = proposal.genotype
            assert not any(np.array_equal(proposal.genotype, genotypes[parent]) for parent in proposal.parents)


def test_differential_evolution_keeps_a_child_only_if_it_beats_its_parent():
    searcher = make_searcher(SearcherSpec(name="ga", population=6, differential={"f": 0.5, "cr": 0.5}),
                             dimension=4, x0=np.full(4, 0.5), seed=2)
    proposals = searcher.ask()
    _tell(searcher, proposals, [_sphere(p) for p in proposals])
    replaced = 0
    for _ in range(5):
        before = [i.fitness for i in searcher.population]
        children = searcher.ask()
        assert all(c.operator == "differential" and len(c.parents) == 3 for c in children)
        assert [c.parents[0] for c in children] == [i.id for i in searcher.population]
        _tell(searcher, children, [_sphere(c) for c in children])
        after = [i.fitness for i in searcher.population]
        assert all(a >= b for a, b in zip(after, before))
        replaced += sum(a > b for a, b in zip(after, before))
    assert replaced > 0


@pytest.mark.slow
def test_a_multi_objective_run_writes_the_pareto_front_of_its_evaluations(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 20}, objectives="separate",
                         searcher={"name": "optuna", "sampler": "nsga2", "batch": 4})
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=8, quiet=True))
    search.run()
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    front = json.loads((tmp_path / "run" / "front.json").read_text())
    assert front == report["front"] and front
    evaluations = [e for e in RunStore.open(tmp_path / "run").evaluations.finished() if e.ok]
    for point in front:
        assert len(point["objectives"]) == 4 and set(point["metrics"]) >= {"zoo_pair_search", "zoo_rev_search"}
        assert "merge_method: task_arithmetic" in point["recipe"]
        assert not any(all(o >= p for o, p in zip(e.objectives, point["objectives"])) and e.objectives != point["objectives"]
                       for e in evaluations)


def _dominates(a, b) -> bool:
    return all(x >= y for x, y in zip(a, b)) and tuple(a) != tuple(b)


def test_nsga2s_own_front_is_the_complete_pareto_front_of_what_it_was_told():
    searcher = make_searcher(SearcherSpec(name="optuna", sampler="nsga2", batch=6), dimension=3,
                             x0=np.full(3, 0.5), seed=4, objectives=2)
    told = {}
    for _ in range(24):
        proposals = searcher.ask()
        fitness = [(-float(np.sum((p.genotype - 0.2) ** 2)), -float(np.sum((p.genotype - 0.8) ** 2)))
                   for p in proposals]
        _tell(searcher, proposals, fitness)
        told.update({tuple(np.round(p.genotype, 12)): f for p, f in zip(proposals, fitness)})
    expected = {g for g, f in told.items() if not any(_dominates(other, f) for other in told.values())}
    own = {tuple(np.round([t.params[f"g{i}"] for i in range(3)], 12)) for t in searcher.study.best_trials}
    assert own == expected and len(expected) > 1


def test_failed_candidates_never_become_parents_or_elites_of_the_genetic_algorithm():
    for selection in ("tournament", "roulette"):
        searcher = make_searcher(SearcherSpec(name="ga", population=6, elitism=2, selection=selection),
                                 dimension=3, x0=np.full(3, 0.5), seed=5)
        failed = set()
        for generation in range(5):
            proposals = searcher.ask()
            assert not failed & {parent for child in proposals for parent in child.parents}, selection
            outcome = [None if p.id % 3 == 1 else _sphere(p) for p in proposals]
            failed |= {p.id for p, f in zip(proposals, outcome) if f is None}
            _tell(searcher, proposals, outcome)
            if generation:
                assert not failed & {i.id for i in searcher.population[:2]}, selection  # the elites
        assert failed


def test_failed_candidates_are_failed_trials_of_optuna_and_the_study_goes_on():
    searcher = make_searcher(SearcherSpec(name="optuna", sampler="tpe", batch=4, startup_trials=4),
                             dimension=3, x0=np.full(3, 0.5), seed=6)
    for _ in range(12):
        proposals = searcher.ask()
        _tell(searcher, proposals, [None if p.id % 2 else _sphere(p) for p in proposals])
    states = [t.state.name for t in searcher.study.trials]
    assert states == ["COMPLETE", "FAIL"] * 6
    assert searcher.study.best_trial.number % 2 == 0
    assert len(searcher.ask()) == 1  # one trial whenever a worker is free


def test_optuna_logs_no_trial_of_a_search_and_keeps_the_users_own_logging_level():
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("optuna").addHandler(handler)
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # as a user who wants to see their own studies
    try:
        searcher = make_searcher(SearcherSpec(name="optuna", sampler="tpe", batch=4), dimension=2,
                                 x0=np.full(2, 0.5), seed=0)
        for _ in range(3):
            _tell(searcher, proposals := searcher.ask(), [_sphere(p) for p in proposals])
        assert searcher.study.trials and logged == []
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        optuna.create_study().optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        assert any("Trial 0 finished" in message for message in logged)  # their own study logs as they asked
    finally:
        logging.getLogger("optuna").removeHandler(handler)
        optuna.logging.set_verbosity(before)


def test_a_single_objective_searcher_refuses_separate_objectives(demo_recipe, tmp_path):
    recipe = demo_recipe(objectives="separate", searcher={"name": "cma"})
    with pytest.raises(EvomergeError, match="cma optimizes one objective"):
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))


def test_the_command_line_chooses_the_searcher(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 10})
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=3, quiet=True, searcher="random")).run()
    assert {e.operator for e in RunStore.open(tmp_path / "run").evaluations.finished()} == {"optuna:random"}


class _StepOptions(SearcherOptions):
    step: float = 0.1


@pytest.fixture
def hill_climber():
    """A third-party searcher: one class under the decorator, its options validated from the recipe like
    a built-in's. It steps each gene in turn from the best point so far, one proposal at a time."""

    @register("hill")
    class HillClimber(Searcher):
        Options = _StepOptions
        generation_size = 1

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.best, self.best_fitness = self.x0, None

        def ask(self):
            if self.outstanding:
                return []
            if self._next_id == 0:
                return [self._proposal(self.x0, operator="start")]
            point = self.best.copy()
            gene = self._next_id % self.dimension
            point[gene] += self.options.step if self._next_id // self.dimension % 2 else -self.options.step
            return [self._proposal(point, parents=(), operator="hill")]

        def _told(self, proposal: Proposal, fitness, scores):
            if fitness is not None and (self.best_fitness is None or fitness[0] > self.best_fitness):
                self.best, self.best_fitness = proposal.genotype, fitness[0]
            self.generation += 1

    yield HillClimber
    del SEARCHERS["hill"]


def test_a_third_party_searcher_is_one_decorator_away_from_a_real_search(hill_climber, demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 10}, searcher={"name": "hill", "step": 0.2})
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=4, quiet=True))
    search.run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert isinstance(search.searcher, hill_climber) and search.searcher.options.step == 0.2
    assert [e.operator for e in evaluations] == ["start", "hill", "hill", "hill"] and all(e.ok for e in evaluations)
    with pytest.raises(ValueError, match="'hill' is already registered"):
        register("hill")(hill_climber)


def test_an_unknown_searcher_is_refused_with_the_names_it_could_mean(hill_climber, demo_recipe, tmp_path):
    recipe = demo_recipe(searcher={"name": "hil"})
    with pytest.raises(EvomergeError, match="unknown searcher 'hil' \\(did you mean 'hill'\\?\\); expected one of "
                                            "cma, ga, hill, llm, optuna, qd, random"):
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))
    assert not (tmp_path / "run").exists()


def test_cma_es_restarts_with_a_doubled_population_and_says_so():
    searcher = make_searcher(SearcherSpec(name="cma", popsize=4), dimension=3, x0=np.full(3, 0.5), seed=0)
    sizes, restarts = [], []
    for _ in range(12):
        proposals = searcher.ask()
        sizes.append(len(proposals))
        restarts.append({p.info["restart"] for p in proposals})
        _tell(searcher, proposals, [(0.0,)] * len(proposals))  # flat: pycma stops on tolflatfitness
    first = next(i for i, r in enumerate(restarts) if r == {1})
    assert all(r == {0} for r in restarts[:first]) and sizes[:first] == [4] * first
    assert sizes[first] == 8


def test_genome_succession_moves_children_toward_the_best_with_a_step_that_decays_each_generation():
    from evomerge.searchers.operators import Succession

    step, decay = 0.5, 0.95
    succession = Succession(step=step, decay=decay)
    x, own, best, worst = np.full(4, 0.5), np.full(4, 0.6), np.full(4, 0.9), np.full(4, 0.1)
    # Toward its own best and the best, away from the worst, each pull drawn uniformly from [0, 1):
    # on average half of each, so the expected move is step × decay^generation × pull.
    pull = ((own - x) + (best - x) - (worst - x)) / 2
    rng = np.random.default_rng(0)  # one generator, independent draws for every move
    for generation in (0, 10, 40):
        size = step * decay ** generation
        moves = np.stack([succession.move(x, own, best, worst, generation, rng) - x for _ in range(4000)])
        assert np.all(moves > 0) and np.all(moves <= size * 2 * pull)  # all push up here, at most a full pull
        assert moves.mean(axis=0) == pytest.approx(size * pull, rel=0.03)  # 4000 draws: 5 standard errors

    searcher = make_searcher(SearcherSpec(name="ga", population=6, elitism=1, succession={"step": 0.5, "decay": 0.95}),
                             dimension=3, x0=np.full(3, 0.5), seed=1)
    for _ in range(3):
        proposals = searcher.ask()
        _tell(searcher, proposals, [_sphere(p) for p in proposals])
    children = searcher.ask()
    assert all(c.operator.endswith("+succession") and c.parents for c in children)
