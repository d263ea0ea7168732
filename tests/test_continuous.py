"""Continuous metrics of the gold answer (`p_gold`, `gold_loglik`), derived from the loglikelihoods
lm-eval logs for each document: checked by hand against a plain lm-eval run, and searched on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import EvomergeError
from evomerge.outputs.finish import finish_run
from evomerge.paths import TASKS_DIR
from evomerge.recipe.schema import TaskSpec
from evomerge.run.start import SearchOptions, start_search
from evomerge.scoring.fitness import Objective
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite


def _model(zoo, name):
    folder = zoo["dir"] / name
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _logged(model, tokenizer, task, include_path):
    """A plain lm-eval run's logged samples, by document."""
    samples = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=[task], log_samples=True,
                              task_manager=TaskManager(include_path=[str(include_path)]),
                              bootstrap_iters=0)["samples"][task]
    return {sample["doc_id"]: sample for sample in samples}


def _tokens(tokenizer, context, continuation):
    """How many tokens the continuation adds to the context."""
    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return count(context + continuation) - count(context)


def test_a_loglikelihood_tasks_p_gold_is_the_answers_probability_and_gold_loglik_its_per_token_loglikelihood(zoo):
    model, tokenizer = _model(zoo, "sort")  # solves some rev documents, not all
    task = "zoo_rev_search"
    scorer = LMEvalScorer(TaskSuite([task], [TASKS_DIR]), model, tokenizer, continuous=True)
    ids = [int(i) for i in np.random.default_rng(0).permutation(150)[:40]]
    found = scorer.score_documents({task: ids})[task]
    logged = _logged(model, tokenizer, task, TASKS_DIR)
    for position, doc in enumerate(ids):
        (context, continuation), = logged[doc]["arguments"]
        (loglik, _), = logged[doc]["filtered_resps"]
        assert found["p_gold"][position] == pytest.approx(math.exp(loglik))
        assert found["gold_loglik"][position] == pytest.approx(loglik / _tokens(tokenizer, context, continuation))
        assert found["acc"][position] == logged[doc]["acc"]
    # Unlike accuracy, it tells apart documents that accuracy scores alike.
    assert len(set(found["p_gold"])) == len(ids) and 0 < min(found["p_gold"]) < max(found["p_gold"]) <= 1

    metrics = scorer.score()[task]
    every = [math.exp(logged[doc]["filtered_resps"][0][0]) for doc in range(150)]
    assert metrics["p_gold"] == pytest.approx(np.mean(every))
    assert metrics["p_gold_stderr"] == pytest.approx(np.std(every, ddof=1) / math.sqrt(150))
    assert metrics["gold_loglik"] < 0 < metrics["gold_loglik_stderr"]


def _multiple_choice_task(directory) -> str:
    """A tiny multiple-choice task over the zoo's rev prompts: the reversal, the base model's near miss
    (its first two letters swapped) and the word as it is, the gold one at a different place in turn."""
    rows = []
    for i, line in enumerate((TASKS_DIR / "data" / "zoo_rev.search.jsonl").read_text().splitlines()[:24]):
        doc = json.loads(line)
        answer = doc["answer"]
        wrong = [answer[1] + answer[0] + answer[2:], doc["prompt"][2:-1]]
        choices = wrong[:i % 3] + [answer] + wrong[i % 3:]
        if len(set(choices)) == 3:
            rows.append({"prompt": doc["prompt"], "choices": choices, "gold": i % 3})
    (directory / "rev_choice.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "rev_choice.yaml").write_text(yaml.safe_dump({
        "task": "rev_choice",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(directory / "rev_choice.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))
    return "rev_choice"


def test_a_multiple_choice_tasks_p_gold_is_the_gold_choices_share_of_the_softmax(zoo, tmp_path):
    task = _multiple_choice_task(tmp_path)
    model, tokenizer = _model(zoo, "base")  # prefers a near miss: some documents right, some wrong
    scorer = LMEvalScorer(TaskSuite([task], [tmp_path]), model, tokenizer)
    metrics, documents = scorer.score_with_documents()
    found = documents[task]
    logged = _logged(model, tokenizer, task, tmp_path)
    assert len(found["p_gold"]) == len(logged) > 15
    for doc, sample in logged.items():
        loglik = np.array([response[0] for response in sample["filtered_resps"]])
        gold = sample["target"]
        assert found["p_gold"][doc] == pytest.approx(np.exp(loglik[gold]) / np.exp(loglik).sum())
        context, continuation = sample["arguments"][gold]
        assert found["gold_loglik"][doc] == pytest.approx(loglik[gold] / _tokens(tokenizer, context, continuation))
        if found["p_gold"][doc] > 0.5:  # a majority of the probability is the argmax
            assert found["acc"][doc] == 1.0
    assert metrics[task]["p_gold"] == pytest.approx(np.mean(found["p_gold"]))
    assert 0 < metrics[task]["p_gold"] < 1


def test_the_continuous_metrics_are_named_like_lm_evals_own_and_averaged_for_racing():
    suite = TaskSuite(["zoo_rev_search", "zoo_rev_gen_search"], [TASKS_DIR])
    assert suite.higher_is_better("zoo_rev_search")["p_gold"] and suite.averaged("zoo_rev_search", "gold_loglik")
    objective = Objective([TaskSpec(name="zoo_rev_search", metric="p_gold")], suite)
    assert objective.names() == ["zoo_rev_search.p_gold"]
    with pytest.raises(EvomergeError, match="does not produce metric 'p_gold'"):  # no likelihood of the gold answer
        Objective([TaskSpec(name="zoo_rev_gen_search", metric="p_gold")], suite)


@pytest.mark.parametrize("racing", [False, True])
def test_a_search_on_p_gold_runs_end_to_end(racing, demo_recipe, tmp_path):
    tasks = ["zoo_rev_search", "zoo_sort_search"]
    recipe = demo_recipe(tasks=[{"name": t, "metric": "p_gold", "weight": 0.5} for t in tasks],
                         report_tasks=["zoo_rev_report", "zoo_sort_report"],
                         eval={"racing": racing} if racing else {"limit": 30},
                         searcher={"name": "ga", "population": 4, "elitism": 1}, confirm=None)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=8, quiet=True))
    best = search.run()
    for evaluation in search.store.evaluations.finished():
        p_gold = [evaluation.metrics[t]["p_gold"] for t in tasks]
        assert evaluation.fitness == pytest.approx(0.5 * sum(p_gold))
        assert all(0 < p < 1 for p in p_gold) and evaluation.metrics[tasks[0]]["p_gold_stderr"] > 0
    assert best.ok and best.fitness == max(e.fitness for e in search.store.evaluations.finished() if e.ok)
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    assert report["gain"]["tasks"] == ["zoo_rev_report", "zoo_sort_report"]
