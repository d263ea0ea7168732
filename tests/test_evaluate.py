"""lm-eval's options a real-model user needs, passed through `evomerge.eval`, and both kinds of task:
loglikelihood (the zoo's `acc` tasks) and generate_until (exact match after a regex filter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.merge.materializer import Materializer
from evomerge.outputs.finish import finish_run
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.schema import EvalSpec
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.run.worker import Worker
from evomerge.run_options import RunOptions
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo import check

# A template that shows each message's role, so the test can read what lm-eval sent.
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _scorer(zoo, name, tasks_dir, tasks, options=EvalSpec(), limit=None, tokenizer=None):
    folder = zoo["dir"] / name
    return LMEvalScorer(TaskSuite(tasks, [tasks_dir], options=options), AutoModelForCausalLM.from_pretrained(folder),
                        tokenizer or AutoTokenizer.from_pretrained(folder), options=options, limit=limit)


def _contexts(scorer, task):
    return [instance.args[0] for instance in scorer.suite.tasks[task].instances]


def test_a_generate_until_task_scores_exact_match_after_its_filter(zoo, tasks_dir):
    specialist = _scorer(zoo, "rev", tasks_dir, ["zoo_rev_gen_search"]).score()["zoo_rev_gen_search"]
    base = _scorer(zoo, "base", tasks_dir, ["zoo_rev_gen_search"]).score()["zoo_rev_gen_search"]
    assert specialist["exact_match,first_word"] >= check.MASTERED
    assert base["exact_match,first_word"] < specialist["exact_match,first_word"]


def test_num_fewshot_and_gen_kwargs_reach_the_tasks(zoo, tasks_dir):
    options = EvalSpec(num_fewshot=2, gen_kwargs={"max_gen_toks": 3})
    scorer = _scorer(zoo, "rev", tasks_dir, ["zoo_rev_gen_search", "zoo_rev_search"], options, limit=4)
    scorer.score()
    assert scorer.suite.tasks["zoo_rev_gen_search"].config.generation_kwargs["max_gen_toks"] == 3
    assert all(context.count("r:") == 3 for context in _contexts(scorer, "zoo_rev_search"))  # 2 shots + the question


def test_the_chat_template_and_system_instruction_shape_every_request(zoo, tasks_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo["dir"] / "rev")
    tokenizer.chat_template = CHAT_TEMPLATE
    options = EvalSpec(apply_chat_template=True, system_instruction="k:", num_fewshot=1, fewshot_as_multiturn=True,
                       max_length=64)
    scorer = _scorer(zoo, "rev", tasks_dir, ["zoo_rev_search"], options, limit=3, tokenizer=tokenizer)
    scorer.score()
    assert scorer.lm.max_length == 64
    for context in _contexts(scorer, "zoo_rev_search"):
        assert context.startswith("<system>k:<user>r:") and context.count("<assistant>") == 1, context


def test_a_candidate_is_scored_in_the_dtype_eval_asks_for(zoo, tasks_dir, write_recipe):
    def loglikelihoods(dtype: str):
        """The rev specialist (the recipe's start) scored by a worker as in a search, in `dtype`: each of 20
        documents' loglikelihood of its answer (the per-document value of lm-eval's `perplexity`)."""
        recipe = write_recipe({
            "merge_method": "task_arithmetic", "base_model": str(zoo["dir"] / "base"),
            "models": [{"model": str(zoo["dir"] / "rev"), "parameters": {"weight": 1.0}}], "dtype": "float32",
            "evomerge": {"search": [{"parameter": "weight", "range": [0.0, 1.5]}],
                         "tasks": [{"name": "zoo_rev_search", "metric": "perplexity"}], "task_paths": [str(tasks_dir)],
                         "eval": {"dtype": dtype, "limit": 20}}}, name=f"{dtype}.yaml")
        worker = Worker(load_recipe(recipe))
        assert worker.begin(list(worker.space.x0)).outcome.status == "ok"
        scores = worker.scorer.score_documents({"zoo_rev_search": range(20)})["zoo_rev_search"]["perplexity"]
        return np.array(scores), {p.dtype for p in worker.materializer.model.parameters()}

    (bfloat16, resident), (float32, _) = loglikelihoods("bfloat16"), loglikelihoods("float32")
    # The same model in 8 bits of mantissa: every document's loglikelihood moves (runs in one dtype agree
    # exactly), by a little (a few thousandths of a nat here, for answers the specialist is sure of).
    assert np.all(bfloat16 != float32), (bfloat16, float32)
    assert np.all(np.abs(bfloat16 - float32) <= 0.05), (bfloat16, float32)
    assert resident == {torch.bfloat16}


def test_bad_eval_options_are_refused_at_the_edge(write_recipe, base_model):
    from evomerge.errors import EvomergeError

    for section, message in (({"fewshot_as_multiturn": True}, "fewshot_as_multiturn needs apply_chat_template"),
                             ({"dtype": "float8"}, "expected one of float32, float16, bfloat16")):
        path = write_recipe({"merge_method": "linear", "models": [{"model": base_model}], "evomerge": {"eval": section}})
        with pytest.raises(EvomergeError, match=message):
            load_recipe(path)


def test_a_generation_task_is_the_fitness_and_its_report_split_the_table(demo_recipe, tmp_path):
    recipe = demo_recipe(tasks=[{"name": "zoo_rev_gen_search", "metric": "exact_match"}],
                         report_tasks=["zoo_rev_gen_report"], eval={"limit": 12, "batch_size": 32},
                         searcher={"name": "random", "batch": 3}, confirm=None)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=3, quiet=True))
    search.run()
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    for evaluation in RunStore.open(tmp_path / "run").evaluations.finished():
        assert evaluation.fitness == evaluation.metrics["zoo_rev_gen_search"]["exact_match,first_word"]
    rev = next(r for r in report["rows"] if r["name"] == "rev")
    assert rev["scores"]["zoo_rev_gen_report"]["metric"] == "exact_match"
    assert rev["scores"]["zoo_rev_gen_report"]["value"] >= check.MASTERED
    assert rev["scores"]["zoo_rev_gen_report"]["stderr"] is not None


def test_reused_requests_score_every_candidate_as_a_fresh_simple_evaluate_does(demo_recipe):
    """Requests are built once per run and reused (evaluate.py's `_reuse_requests`); any per-instance
    state lm-eval kept between calls would leak from one candidate into the next one's score."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evomerge.recipe.space_factory import build_space

    recipe = load_recipe(demo_recipe())
    space = build_space(recipe)
    tasks = ["zoo_rev_search", "zoo_rev_gen_search"]
    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True))
    scorer = LMEvalScorer(TaskSuite(tasks, recipe.task_paths()), materializer.model, materializer.tokenizer, limit=12)
    rng = np.random.default_rng(0)
    for _ in range(2):
        materializer.materialize(space.decode(space.from_unit(rng.uniform(size=space.dimension))))
        reused = scorer.score()
        fresh = simple_evaluate(model=HFLM(pretrained=materializer.model, tokenizer=materializer.tokenizer),
                                tasks=tasks, task_manager=TaskManager(include_path=[str(p) for p in recipe.task_paths()]),
                                limit=12, bootstrap_iters=0)["results"]
        assert reused["zoo_rev_search"]["acc"] == fresh["zoo_rev_search"]["acc,none"]
        assert reused["zoo_rev_gen_search"]["exact_match,first_word"] == \
            fresh["zoo_rev_gen_search"]["exact_match,first_word"]
