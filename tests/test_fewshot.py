"""A document's few-shot examples depend only on (run seed, task, document): a racing stage, a full
evaluation and the report's own build give it the same prompt."""

from __future__ import annotations

import pytest

from evomerge.merge import Materializer
from evomerge.recipe import build_space, load_recipe
from evomerge.recipe.schema import EvalSpec, RacingSpec, TaskSpec
from evomerge.run_options import RunOptions
from evomerge.scoring import LMEvalScorer, Objective, Race, TaskSuite

TASKS = ["zoo_rev_search", "zoo_rev_gen_search"]  # a loglikelihood task and a generate_until task
SHOTS = EvalSpec(num_fewshot=3, gen_kwargs={"max_gen_toks": 8})


@pytest.fixture(scope="module")
def resident(zoo, tmp_path_factory):
    from evomerge.zoo.recipe import write_demo_recipe

    recipe = load_recipe(write_demo_recipe(tmp_path_factory.mktemp("fewshot"), zoo["dir"]))
    start = build_space(recipe).starting_point()
    materializer = Materializer(start.merge, options=RunOptions(quiet=True))
    materializer.materialize(start)
    return recipe, materializer


def _scorer(recipe, materializer, seed: int = 7) -> LMEvalScorer:
    suite = TaskSuite(TASKS, recipe.task_paths(), options=SHOTS, seed=seed)
    return LMEvalScorer(suite, materializer.model, materializer.tokenizer, options=SHOTS, limit=40)


def _prompts(scorer: LMEvalScorer, documents=None) -> dict:
    """The prompts lm-eval built last, by task and document: `documents` are those a `samples=` build
    was asked for, which lm-eval numbers 0, 1, ... in the (sorted) order they were asked."""
    built = {task: [instance.arguments[0] for instance in sorted(scorer.suite.tasks[task]._instances,
                                                                  key=lambda i: i.doc_id)] for task in TASKS}
    return {task: dict(zip(documents or range(len(prompts)), prompts)) for task, prompts in built.items()}


def test_a_documents_prompt_is_the_same_in_a_stage_a_full_build_and_the_report(resident):
    recipe, materializer = resident
    scorer = _scorer(recipe, materializer)
    scorer.score_documents({task: [31, 4, 17] for task in TASKS})  # a racing stage, in run order
    staged = _prompts(scorer, [4, 17, 31])
    scorer.score()  # every document of the first 40
    full = _prompts(scorer)
    report = _scorer(recipe, materializer)  # the report's own suite, built afresh
    report.score_documents({task: [17] for task in TASKS})
    alone = _prompts(report, [17])
    for task in TASKS:
        assert staged[task] == {doc: full[task][doc] for doc in (4, 17, 31)}
        assert alone[task][17] == full[task][17]
        assert all(prompt.count(":") >= 4 for prompt in staged[task].values())  # three shots and the question
        assert len(set(full[task].values())) == len(full[task])  # each document its own prompt
    other = _scorer(recipe, materializer, seed=8)
    other.score_documents({task: [17] for task in TASKS})
    assert _prompts(other, [17])["zoo_rev_search"][17] != full["zoo_rev_search"][17]  # the run seed draws the shots


def test_a_raced_candidate_scored_in_full_has_a_plain_evaluations_fitness(resident):
    recipe, materializer = resident
    scorer = _scorer(recipe, materializer)
    objective = Objective([TaskSpec(name="zoo_rev_search", metric="acc")], scorer.suite)
    *_, raced = Race(RacingSpec(stages=[0.2, 0.5, 1.0]), scorer, objective, seed=3).stages_scored()
    plain = _scorer(recipe, materializer).score()
    assert raced.complete and raced.metrics["zoo_rev_search"]["acc"] == plain["zoo_rev_search"]["acc"]
