"""Racing: candidates scored in stages on growing shares of the search documents, through
lm-eval's own `samples=`, and stopped when they cannot reach the bar."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from evomerge.errors import EvomergeError
from evomerge.merge.materializer import Materializer
from evomerge.outputs.finish import finish_run
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.schema import RacingSpec, TaskSpec
from evomerge.recipe.space_factory import build_space
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run.worker import Worker
from evomerge.run_options import RunOptions
from evomerge.scoring.fitness import Objective
from evomerge.scoring.racing import Bar, Race, RaceResult, stops
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite

TASKS = ["zoo_rev_search", "zoo_sort_search"]


@pytest.fixture
def resident(demo_recipe):
    """The demo's starting point, resident, with a scorer on two search tasks."""
    recipe = load_recipe(demo_recipe())
    space = build_space(recipe)
    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True))
    materializer.materialize(space.starting_point())
    suite = TaskSuite(TASKS, recipe.task_paths())
    scorer = LMEvalScorer(suite, materializer.model, materializer.tokenizer)
    objective = Objective([TaskSpec(name=t, metric="acc", weight=0.5) for t in TASKS], suite)
    return recipe, space, materializer, scorer, objective


def test_staged_scores_equal_a_plain_lm_eval_run_on_the_same_documents(resident):
    recipe, _, materializer, scorer, objective = resident
    race = Race(RacingSpec(stages=[0.2, 0.6, 1.0]), scorer, objective, seed=3)
    first = race.stages[0]
    staged = scorer.score_documents(first)
    plain = simple_evaluate(model=HFLM(pretrained=materializer.model, tokenizer=materializer.tokenizer), tasks=TASKS,
                            task_manager=TaskManager(include_path=[str(p) for p in recipe.task_paths()]),
                            samples=first, bootstrap_iters=0)["results"]
    for task in TASKS:
        assert len(staged[task]["acc"]) == len(first[task]) == 30
        assert sum(staged[task]["acc"]) / 30 == plain[task]["acc,none"]
    *_, whole = race.stages_scored()
    assert whole.complete and whole.documents == 300 and whole.upper == pytest.approx(whole.estimate)
    assert all({"acc", "acc_stderr"} <= set(whole.metrics[task]) for task in TASKS)
    full = scorer.score()
    assert all(whole.metrics[task]["acc"] == full[task]["acc"] for task in TASKS)


def test_each_document_keeps_its_own_score_in_the_order_asked(resident):
    """lm-eval yields `samples=` documents in the dataset's order and labels them in the order
    given, so a stage's scores are only the right documents' if they are asked for sorted."""
    recipe, _, materializer, scorer, _ = resident
    plain = simple_evaluate(model=HFLM(pretrained=materializer.model, tokenizer=materializer.tokenizer), tasks=TASKS,
                            task_manager=TaskManager(include_path=[str(p) for p in recipe.task_paths()]),
                            log_samples=True, bootstrap_iters=0)["samples"]
    ids = [int(i) for i in np.random.default_rng(0).permutation(150)]
    staged = scorer.score_documents({task: ids for task in TASKS})
    by_id = {task: {sample["doc_id"]: sample["acc"] for sample in plain[task]} for task in TASKS}
    assert any(0 < sum(by_id[task].values()) < 150 for task in TASKS)  # some right, some wrong: the order matters
    for task in TASKS:
        assert staged[task]["acc"] == [by_id[task][i] for i in ids]


def test_the_stages_share_one_shuffled_order_and_never_score_a_document_twice(resident):
    _, _, _, scorer, objective = resident
    race = Race(RacingSpec(), scorer, objective, seed=0)
    for task in TASKS:
        ids = [i for stage in race.stages for i in stage[task]]
        assert sorted(ids) == list(range(150)) and ids != list(range(150))
        assert [len(stage[task]) for stage in race.stages] == [19, 19, 37, 75]
    again = Race(RacingSpec(), scorer, objective, seed=0)
    assert again.stages == race.stages and Race(RacingSpec(), scorer, objective, seed=1).stages != race.stages


def test_a_race_never_scores_the_documents_held_back_to_confirm_the_finalists(resident):
    _, _, materializer, scorer, objective = resident
    split = scorer.suite.split(0.25, seed=0)
    searching = LMEvalScorer(scorer.suite, materializer.model, materializer.tokenizer, samples=split.search)
    race = Race(RacingSpec(), searching, objective, seed=0)
    for task in TASKS:
        ids = [i for stage in race.stages for i in stage[task]]
        assert sorted(ids) == split.search[task] and not set(ids) & set(split.held_back[task])


def test_requests_are_built_once_per_stage_whatever_the_number_of_candidates(resident):
    _, space, materializer, scorer, objective = resident
    race = Race(RacingSpec(), scorer, objective, seed=0)
    for value in (0.0, 0.5, 1.0):
        materializer.materialize(space.decode(space.from_unit([value] * space.dimension)))
        list(race.stages_scored())
    for task in TASKS:
        assert len(scorer.suite.tasks[task].build_all_requests.builds) == len(race.stages)


def test_a_candidate_that_cannot_reach_the_bar_stops_at_the_first_stage(demo_recipe):
    recipe = load_recipe(demo_recipe(tasks=[{"name": t, "metric": "acc", "weight": 0.5} for t in TASKS],
                                     eval={"racing": True}))
    worker = Worker(recipe)
    start = worker.space.x0.tolist()
    hopeless = Bar(2.0)  # above any fitness two accuracies at weight 0.5 can reach
    step = worker.begin(start, hopeless)
    assert step.stage == 1 and step.outcome is None and stops(hopeless.fitness + step.margin, step.upper)
    stopped = worker.stop().outcome
    assert stopped.status == "raced" and stopped.documents == 38 and stopped.fitness == step.estimate
    step = worker.begin(start, Bar(-1.0))
    assert not stops(-1.0 + step.margin, step.upper)


def test_a_raced_search_stores_estimates_documents_and_picks_a_fully_scored_winner(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"racing": {"stages": [0.3, 1.0], "confidence": 0.9}},
                         searcher={"name": "ga", "population": 6, "elitism": 1}, confirm=None)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=18, quiet=True))
    best = search.run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    raced = [e for e in evaluations if e.raced]
    full = 4 * (150 - 8)  # 5% of each task's 150 documents held back to confirm (the fixture's light crowning)
    assert raced and all(0 < e.documents < full and e.fitness is not None for e in raced)
    assert all(e.documents == full for e in evaluations if e.ok)
    assert best.ok and best.fitness == max(e.fitness for e in evaluations if e.ok)
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    rows = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert [r["documents"] for r in rows] == [e.documents for e in evaluations]
    assert report["raced"] == len(raced) and report["documents"] == sum(e.documents for e in evaluations)


@pytest.mark.parametrize("change, message", [
    ({"objectives": "separate"}, "racing compares one fitness with a bar"),
    ({"tasks": [{"name": "zoo_rev_search", "metric": "perplexity"}]}, "zoo_rev_search's perplexity is not"),
])
def test_racing_needs_one_fitness_of_averaged_metrics(change, message, demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"racing": True}, searcher={"name": "optuna", "sampler": "nsga2"}, **change)
    with pytest.raises(EvomergeError, match=message):
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))


def test_optunas_pruner_sees_every_stage_and_prunes_instead_of_the_bar(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"racing": {"stages": [0.25, 0.5, 1.0]}},
                         searcher={"name": "optuna", "sampler": "tpe", "batch": 4, "pruner": "median"})
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=16, quiet=True))
    search.run()
    trials = search.searcher.study.trials
    raced = {e.id for e in search.store.evaluations.finished() if e.raced}
    assert raced and {t.number for t in trials if t.state.name == "PRUNED"} == raced
    assert all(set(t.intermediate_values) == {1, 2} for t in trials if t.state.name == "COMPLETE")
    assert all(max(t.intermediate_values) < 3 for t in trials if t.state.name == "PRUNED")


def test_a_run_with_optunas_pruner_resumes_as_it_would_have_gone_on(demo_recipe, tmp_path):
    """The resumed pruner sees the stored stages again: its trials are pruned and valued as they were."""
    recipe = demo_recipe(eval={"racing": {"stages": [0.25, 0.5, 1.0]}, "limit": 40},
                         searcher={"name": "optuna", "sampler": "tpe", "batch": 4, "startup_trials": 4,
                                   "pruner": "median"})
    start_search(recipe, tmp_path / "whole", SearchOptions(evaluations=12, quiet=True)).run()
    start_search(recipe, tmp_path / "stopped", SearchOptions(evaluations=7, quiet=True)).run()
    resumed = resume_search(tmp_path / "stopped", RunOptions(quiet=True), evaluations=12)
    resumed.run()
    whole = RunStore.open(tmp_path / "whole").evaluations.finished()
    assert [(e.genotype, e.fitness, e.status) for e in resumed.store.evaluations.finished()] == \
           [(e.genotype, e.fitness, e.status) for e in whole]
    assert any(e.raced for e in whole[:7]) and any(e.raced for e in whole[7:])
    trials = resumed.searcher.study.trials
    assert {t.number for t in trials if t.state.name == "PRUNED"} == {e.id for e in whole if e.raced}


def test_a_pruner_needs_the_racing_stages(demo_recipe, tmp_path):
    recipe = demo_recipe(searcher={"name": "optuna", "pruner": "median"})
    with pytest.raises(EvomergeError, match="evomerge.searcher.pruner: a pruner sees each racing stage"):
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))


class _Simulated:
    """What a race sees of lm-eval, for simulations without a model: one task, "sim", whose documents
    have fixed 0/1 scores; its own task suite."""

    limit = None
    names = ("sim",)

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)
        self.suite = self

    def documents(self, task, limit=None):
        return len(self.scores)

    def pool(self, task):
        return list(range(len(self.scores)))

    def higher_is_better(self, task):
        return {"acc": True}

    def result_key(self, task, metric):
        return metric

    def score_documents(self, samples):
        return {task: {"acc": self.scores[ids].tolist()} for task, ids in samples.items() if len(ids)}


def _race(scores, spec, seed=0) -> Race:
    scorer = _Simulated(scores)
    return Race(spec, scorer, Objective([TaskSpec(name="sim", metric="acc")], scorer), seed)


def _pair(rng, documents: int, shift: float):
    """A bar and a candidate of one search on `documents` documents: each document has its own success
    rate (hard and easy ones), the bar succeeds with that rate and the candidate with the rate + `shift`,
    both from one draw on 90% of the documents (models of one search fail on mostly the same ones)."""
    rate = rng.beta(0.5, 0.5, documents)
    draw = rng.random(documents)
    own = np.where(rng.random(documents) < 0.9, draw, rng.random(documents))
    return (own < rate + shift).astype(float), (draw < rate).astype(float)


@pytest.mark.parametrize("shift", [-0.1, 0.0, 0.1])  # a worse, an equal and a better candidate
def test_the_paired_bound_covers_the_candidates_full_score_at_the_stated_confidence(shift):
    spec = RacingSpec(stages=[0.125, 0.25, 0.5, 1.0], confidence=0.9)
    rng = np.random.default_rng(0)
    trials = 1000
    covered = np.zeros((2, 4))  # paired with the bar's scores, the candidate's own; after each stage
    width = np.zeros((2, 3))
    for trial in range(trials):  # a new pair of models and a new document order each time
        candidate, bar_scores = _pair(rng, 150, shift)
        truth = candidate.mean()  # the candidate's fitness once all 150 documents are scored
        race = _race(candidate, spec, seed=trial)
        order = [i for stage in race.stages for i in stage["sim"]]  # the run's document order
        bar = Bar(bar_scores.mean(), scores={"sim": {"acc": bar_scores[order].tolist()}})  # fully scored
        for stage, result in enumerate(race.stages_scored()):
            bounds = race.upper(result, bar), race.upper(result, None)
            covered[:, stage] += [upper >= truth - 1e-9 for upper in bounds]
            if not result.complete:
                width[:, stage] += [upper - truth for upper in bounds]
                assert race.upper(result, Bar(bar.fitness)) == bounds[1]  # a bar without scores: the candidate's own
    coverage = covered / trials
    # One-sided coverage of the truth at every stage: about the stated confidence, certain once every
    # document is scored. A normal bound on 19 documents falls short of it by about 0.02 for a better
    # candidate (0.88 in 7000 trials), and 1000 trials have a Monte-Carlo error of 0.01: 0.06 below.
    assert np.all(coverage >= spec.confidence - 0.06), coverage
    assert np.all(coverage[:, -1] == 1.0)
    assert np.all(width[0] < width[1]), width  # pairing pays: the bound is closer to the truth


def test_on_a_task_of_six_documents_the_bound_covers_at_the_stated_confidence_exactly():
    """Brute force: every outcome of six documents (which of them each model solves) and every set of
    documents scored first, weighted by their probability, give the paired bound's exact coverage."""
    documents, confidence = 6, 0.9
    race = _race(np.zeros(documents), RacingSpec(confidence=confidence))
    kinds = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]  # a document's (candidate, bar) scores
    covered = {}  # outcome (how many documents of each kind) -> documents scored -> share of orders covered
    for counts in itertools.product(range(documents + 1), repeat=4):
        if sum(counts) != documents:
            continue
        candidate, bar_scores = (np.array([kind[i] for kind, count in zip(kinds, counts) for _ in range(count)])
                                 for i in (0, 1))
        for scored in range(1, documents):
            firsts = list(itertools.combinations(range(documents), scored))  # each equally likely
            hits = 0
            for first in firsts:
                order = list(first) + [i for i in range(documents) if i not in first]
                bar = Bar(bar_scores.mean(), scores={"sim": {"acc": bar_scores[order].tolist()}})
                result = RaceResult(metrics={}, estimate=0.0, upper=0.0, documents=scored, complete=False,
                                    scores={"sim": {"acc": candidate[list(first)].tolist()}})
                hits += race.upper(result, bar) >= candidate.mean() - 1e-9
            covered.setdefault(counts, {})[scored] = hits / len(firsts)
    # Each document's kind drawn with these chances: models that agree on most documents, the
    # candidate as good as the bar, better, worse. (Given one unlucky outcome the coverage can be far
    # lower: the bound is a normal approximation, about the stated confidence on average over outcomes.)
    for chances in ([0.3, 0.1, 0.1, 0.5], [0.3, 0.05, 0.15, 0.5], [0.3, 0.15, 0.05, 0.5]):
        for scored in range(1, documents):
            coverage = sum(math.factorial(documents) / math.prod(math.factorial(c) for c in counts)
                           * math.prod(p ** c for p, c in zip(chances, counts)) * shares[scored]
                           for counts, shares in covered.items())
            assert coverage >= confidence, (chances, scored, coverage)


def test_no_bound_exceeds_what_the_candidate_reaches_by_scoring_best_on_every_document_left(resident):
    _, _, _, scorer, objective = resident
    race = Race(RacingSpec(confidence=1 - 1e-9), scorer, objective, seed=0)  # a normal bound six s.e. wide

    def scored(misses: int) -> RaceResult:
        """A candidate that has scored 38 documents of each task and missed `misses` of the second's."""
        scores = {TASKS[0]: {"acc": [1.0] * 38}, TASKS[1]: {"acc": [1.0] * (38 - misses) + [0.0] * misses}}
        return RaceResult(metrics={}, estimate=0.0, upper=0.0, documents=76, complete=False, scores=scores)

    assert race.upper(scored(2), None) == pytest.approx(0.5 * 1.0 + 0.5 * (150 - 2) / 150)
    # A bar that misses one document in all: the candidate that missed two can no longer beat it,
    # whatever the confidence; one that missed one could at best tie it, and a tie cannot win.
    one_miss = {t: {"acc": [1.0] * 150} for t in TASKS}
    one_miss[TASKS[0]]["acc"][-1] = 0.0
    bar = Bar(1.0 - 0.5 / 150, scores=one_miss)
    assert race.upper(scored(2), bar) < bar.fitness and stops(bar.fitness, race.upper(scored(2), bar))
    assert race.upper(scored(1), bar) == pytest.approx(bar.fitness)
    assert stops(bar.fitness, race.upper(scored(1), bar))
    assert not stops(bar.fitness, bar.fitness + 1e-6)  # a bound above the bar goes on


def test_a_margin_stops_a_candidate_that_cannot_beat_the_bar_by_more_than_its_standard_errors(resident):
    _, _, _, scorer, objective = resident
    *_, whole = Race(RacingSpec(), scorer, objective, seed=0).stages_scored()
    bar = Bar(whole.estimate, scores=whole.scores)
    stderr = math.sqrt(sum(0.25 * np.var(whole.scores[t]["acc"], ddof=1) / 150 for t in TASKS))
    assert stderr > 0, "the demo's start misses some documents"
    race = Race(RacingSpec(margin=2.0), scorer, objective, seed=0)
    assert race.margin_of(bar) == pytest.approx(2.0 * stderr)
    assert race.margin_of(Bar(whole.estimate)) == 0.0  # no per-document scores, no standard error
    # The same model against itself: no margin, it is scored in full (it may tie); with one, it stops early.
    plain = Race(RacingSpec(), scorer, objective, seed=0)
    assert not any(stops(bar.fitness, plain.upper(stage, bar)) for stage in plain.stages_scored() if not stage.complete)
    stopped = next((stage for stage in race.stages_scored()
                    if not stage.complete and stops(bar.fitness + race.margin_of(bar), race.upper(stage, bar))), None)
    assert stopped is not None and stopped.estimate == pytest.approx(whole.estimate, abs=0.1)


def test_a_per_token_loglikelihoods_bound_never_exceeds_certainty_on_every_document_left(resident):
    _, _, _, scorer, _ = resident
    objective = Objective([TaskSpec(name=t, metric="gold_loglik", weight=0.5) for t in TASKS], scorer.suite)
    race = Race(RacingSpec(confidence=1 - 1e-9), scorer, objective, seed=0)
    near_certain = {task: {"gold_loglik": [-0.01] * 38} for task in TASKS}
    scored = RaceResult(metrics={}, estimate=-0.01, upper=0.0, documents=76, complete=False, scores=near_certain)
    assert race.upper(scored, None) <= -0.01 * 38 / 150 < 0  # the 112 documents left score 0 at best
