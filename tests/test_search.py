"""`evomerge search` end to end: real merges, real lm-eval, a real run directory."""

from __future__ import annotations

import json
import random
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mergekit.config import MergeConfiguration

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.outputs.finish import finish_run
from evomerge.recipe.loading import load_recipe
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.searchers import make_searcher

FAST = {"eval": {"limit": 30}, "searcher": {"name": "cma", "popsize": 4}}


def _search(recipe, run_dir, evaluations=8, **options):
    search = start_search(recipe, run_dir, SearchOptions(evaluations=evaluations, quiet=True, **options))
    search.run()
    return search


@pytest.mark.slow
def test_shortened_demo_winner_beats_the_starting_point_and_every_parent(demo_recipe, tmp_path):
    search = _search(demo_recipe(), tmp_path / "run", evaluations=16)
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    rows = {r["role"]: r for r in report["rows"] if r["role"] != "parent"}
    parents = [r for r in report["rows"] if r["role"] == "parent"]
    winner = rows["winner"]
    assert winner["mean"] > rows["start"]["mean"] + winner["mean_stderr"]
    assert winner["mean"] > max(p["mean"] for p in parents) + winner["mean_stderr"]
    assert len(parents) == 5 and all(set(r["scores"]) == {f"zoo_{s}_report" for s in ("pair", "rev", "sort", "shift")}
                                     for r in report["rows"])


def test_the_run_directory_holds_every_evaluation_and_a_plain_best_recipe(demo_recipe, tmp_path):
    run = tmp_path / "run"
    search = start_search(demo_recipe(**FAST, confirm=None), run, SearchOptions(evaluations=8, quiet=True))
    returned = search.run()
    finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    assert (run / "recipe.yaml").read_text() == (tmp_path / "demo.yaml").read_text()
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(8))
    first = rows[0]
    assert first["status"] == "ok" and len(first["genotype"]) == 8
    assert set(first["metrics"]) == {"zoo_pair_search", "zoo_rev_search", "zoo_sort_search", "zoo_shift_search"}
    assert first["fitness"] == pytest.approx(sum(0.25 * m["acc"] for m in first["metrics"].values()))
    assert first["materialize_seconds"] > 0 and first["evaluate_seconds"] > 0
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert best.pop("evomerge") == {"seed": 0}
    MergeConfiguration.model_validate(best)
    # The winner, read from the file alone: the best fitness of those fully scored, the earliest on ties.
    winner = min((r for r in rows if r["status"] == "ok"), key=lambda r: (-r["fitness"], r["id"]))
    assert (returned.id, returned.fitness) == (winner["id"], winner["fitness"])
    crowned = RunStore.open(run).confirmations.crown()["winner"]  # a finalist beyond the noise, or the start
    assert (run / "best.yaml").read_text() == rows[crowned]["recipe"]  # (tests/test_crowning.py)
    assert (run / "report.md").read_text().startswith("# evomerge search report")


def test_the_same_seed_gives_the_same_run(demo_recipe, tmp_path):
    recipe = demo_recipe(**{**FAST, "eval": {"limit": 10}})
    first = RunStore.open(_search(recipe, tmp_path / "a", evaluations=6).store.directory).evaluations.finished()
    second = RunStore.open(_search(recipe, tmp_path / "b", evaluations=6).store.directory).evaluations.finished()
    assert [(e.genotype, e.fitness) for e in first] == [(e.genotype, e.fitness) for e in second]
    other = RunStore.open(_search(recipe, tmp_path / "c", evaluations=6, seed=1).store.directory).evaluations.finished()
    assert [e.genotype for e in other] != [e.genotype for e in first]


def test_a_lower_is_better_metric_counts_against_the_fitness(demo_recipe, tmp_path):
    recipe = demo_recipe(**FAST, tasks=[{"name": "zoo_rev_search", "metric": "perplexity", "weight": 2.0}])
    evaluation = RunStore.open(_search(recipe, tmp_path / "run", evaluations=1).store.directory).evaluations.finished()[0]
    assert evaluation.fitness == pytest.approx(-2.0 * evaluation.metrics["zoo_rev_search"]["perplexity"])


def test_a_metric_the_task_does_not_produce_is_an_error_listing_those_it_does(demo_recipe, tmp_path):
    recipe = demo_recipe(tasks=[{"name": "zoo_rev_search", "metric": "f1"}])
    with pytest.raises(EvomergeError, match=r"evomerge.tasks\[0\].metric: task 'zoo_rev_search' does not produce "
                                            r"metric 'f1'; it produces acc, gold_loglik, p_gold, perplexity"):
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))


def test_a_custom_fitness_function_named_in_the_recipe(demo_recipe, tmp_path):
    (tmp_path / "my_fitness.py").write_text(textwrap.dedent('''
        def score(model, tokenizer):
            ids = tokenizer("r:abcde=", return_tensors="pt")["input_ids"]
            return {"logit_scale": float(model(input_ids=ids).logits.std()), "one": 1.0}
    '''))
    recipe = demo_recipe(**FAST, tasks=[{"name": "zoo_rev_search", "metric": "acc"}], fitness="my_fitness:score")
    evaluation = RunStore.open(_search(recipe, tmp_path / "run", evaluations=2).store.directory).evaluations.finished()[0]
    custom = evaluation.metrics["custom"]
    assert set(custom) == {"custom.logit_scale", "custom.one"}
    assert evaluation.fitness == pytest.approx(evaluation.metrics["zoo_rev_search"]["acc"] + sum(custom.values()))


def test_scoring_leaves_the_global_random_generators_alone(zoo, tasks_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scorer = LMEvalScorer(TaskSuite(["zoo_rev_search"], [tasks_dir]),
                          AutoModelForCausalLM.from_pretrained(zoo["dir"] / "rev"),
                          AutoTokenizer.from_pretrained(zoo["dir"] / "rev"), limit=10)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    scorer.score()
    assert (random.random(), np.random.random()) == expected


def test_cma_draws_from_its_own_generator(demo_recipe):
    recipe = load_recipe(demo_recipe())
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    searcher = make_searcher(recipe.spec.searcher, 8, np.full(8, 0.5), seed=3)
    proposals = searcher.ask()
    for p in proposals:
        searcher.tell(p.id, (float(p.genotype.sum()),))
    assert np.array_equal(np.random.get_state()[1], before)
    again = make_searcher(recipe.spec.searcher, 8, np.full(8, 0.5), seed=3)
    assert all(np.array_equal(a.genotype, b.genotype) for a, b in zip(proposals, again.ask()))


@pytest.mark.slow
def test_the_search_command_prints_the_report_table(demo_recipe, tmp_path):
    recipe = demo_recipe(**FAST)
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--evaluations", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| winner (#" in result.output and "| starting point | start |" in result.output
    assert "the run as an Optuna study: optuna-dashboard sqlite:///" in result.output
    assert (tmp_path / "run" / "report.json").is_file()
