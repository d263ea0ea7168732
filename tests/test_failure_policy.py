"""One transient failure never ends a run, whatever the searcher's batch; a run that cannot work still
stops, naming the first failure's cause and candidate (`budget.max_failures`, `max_consecutive_failures`)."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.run.store import RunStore

FAILS_ON_ITS_SIXTH_CALL = textwrap.dedent('''
    from pathlib import Path

    CALLS = Path(__file__).with_name("calls")  # counted in a file: every process and every load of this module

    def score(model, tokenizer):
        calls = int(CALLS.read_text()) + 1 if CALLS.exists() else 1
        CALLS.write_text(str(calls))
        if calls == 6:
            raise RuntimeError("a transient fault")
        return 0.0
''')
ALWAYS_FAILS = "def score(model, tokenizer):\n    raise ValueError('this fitness cannot work')\n"
FAILS_EVERY_OTHER_CALL = FAILS_ON_ITS_SIXTH_CALL.replace("calls == 6", "calls % 2 == 0")


def _search(demo_recipe, tmp_path, fitness: str, evaluations: int, searcher: dict, **budget):
    (tmp_path / "fitness_under_test.py").write_text(fitness)
    recipe = demo_recipe(eval={"limit": 5}, searcher=searcher, fitness="fitness_under_test:score", confirm=None,
                         report_tasks=[], budget={"evaluations": evaluations, **budget})
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    return result, RunStore.open(tmp_path / "run")


@pytest.mark.parametrize("searcher", [{"name": "optuna", "sampler": "tpe", "batch": 1},
                                      {"name": "ga", "population": 4, "elitism": 3}],  # then generations of 1
                         ids=["tpe-batch-1", "ga-one-child"])
def test_a_fitness_that_fails_once_does_not_end_the_run(demo_recipe, tmp_path, searcher):
    result, store = _search(demo_recipe, tmp_path, FAILS_ON_ITS_SIXTH_CALL, 8, searcher)
    assert result.exit_code == 0, result.output
    finished = store.evaluations.finished()
    assert len(finished) == 8 and store.meta("status") == "done"
    assert [e.error for e in finished if e.failed] == ["RuntimeError: a transient fault"]


def test_a_fitness_that_always_fails_stops_the_run_naming_the_first_failure(demo_recipe, tmp_path):
    result, store = _search(demo_recipe, tmp_path, ALWAYS_FAILS, 20, {"name": "optuna", "sampler": "tpe", "batch": 1})
    assert result.exit_code == 2
    assert result.output == (f"error: {tmp_path / 'run'}: 5 candidates failed in a row (by default a generation, "
                             "at least 5; set evomerge.budget.max_consecutive_failures); the first of them, "
                             "candidate 0: ValueError: this fitness cannot work\n")
    assert store.evaluations.count() == 5 and store.meta("status") == "failed"


def test_the_limits_are_the_recipes_to_set(demo_recipe, tmp_path):
    searcher = {"name": "random", "batch": 1}
    result, store = _search(demo_recipe, tmp_path, FAILS_EVERY_OTHER_CALL, 20, searcher, max_failures=3)
    assert result.exit_code == 2
    assert result.output.endswith("3 candidates failed (evomerge.budget.max_failures: 3); the first of them, "
                                  "candidate 1: RuntimeError: a transient fault\n")
    assert [e.failed for e in store.evaluations.finished()] == [False, True, False, True, False, True]

    (tmp_path / "calls").unlink()
    (tmp_path / "run").rename(tmp_path / "first")
    result, store = _search(demo_recipe, tmp_path, ALWAYS_FAILS, 20, searcher, max_consecutive_failures=2)
    assert result.output.endswith("2 candidates failed in a row (evomerge.budget.max_consecutive_failures: 2); "
                                  "the first of them, candidate 0: ValueError: this fitness cannot work\n")
    assert store.evaluations.count() == 2
