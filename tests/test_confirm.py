"""Confirm before crowning: the search's best few are scored on a third split, and the best there wins."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.run.store import RunStore

CONFIRM_TASKS = [f"zoo_{skill}_confirm" for skill in ("pair", "rev", "sort", "shift")]


@pytest.fixture(scope="module")
def confirmed_run(zoo, tmp_path_factory):
    """A short demo search, confirm on as the demo has it (the best 4, on the zoo's confirm split)."""
    from evomerge.zoo.recipe import write_demo_recipe

    directory = tmp_path_factory.mktemp("confirm")
    recipe = write_demo_recipe(directory, zoo["dir"], eval={"limit": 20},
                               searcher={"name": "ga", "population": 4, "elitism": 1})
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(directory / "run"),
                                       "--evaluations", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    return directory / "run"


def test_the_winner_is_the_best_of_the_top_k_on_the_confirmation_tasks(confirmed_run):
    store = RunStore.open(confirmed_run)
    top = store.evaluations.ranked()[:4]
    confirmations = store.confirmations.all()
    assert set(confirmations) == {e.id for e in top}
    for confirmation in confirmations.values():  # the mean accuracy over the confirmation tasks
        assert set(confirmation.metrics) == set(CONFIRM_TASKS)
        assert confirmation.fitness == pytest.approx(sum(confirmation.metrics[t]["acc"] for t in CONFIRM_TASKS) / 4)
    best_there = max(confirmations.values(), key=lambda c: c.fitness).fitness
    winner = next(e for e in top if confirmations[e.id].fitness == best_there)  # ties: the better search rank
    assert store.confirmations.standings()[0].id == winner.id
    assert (confirmed_run / "best.yaml").read_text() == winner.recipe
    assert store.report("report")["winner_id"] == winner.id


def test_export_rank_1_is_the_confirmed_winner(confirmed_run, tmp_path):
    store = RunStore.open(confirmed_run)
    winner = store.confirmations.standings()[0]
    result = CliRunner().invoke(main, ["export", str(confirmed_run), "--out", str(tmp_path / "model"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"This candidate: evaluation #{winner.id} " in (tmp_path / "model" / "README.md").read_text()


def test_the_report_lists_the_finalists_by_search_fitness_and_by_confirmation(confirmed_run):
    store = RunStore.open(confirmed_run)
    report = (confirmed_run / "report.md").read_text()
    lines = report.splitlines()
    start = lines.index("| rank | search fitness order | confirmation order |")
    rows = [line.split(" | ") for line in lines[start + 2:start + 6]]
    by_search = [cells[1].split()[0] for cells in rows]
    by_confirmation = [cells[2].split()[0] for cells in rows]
    assert by_search == [f"#{e.id}" for e in store.evaluations.ranked()[:4]]
    assert by_confirmation == [f"#{e.id}" for e in store.confirmations.standings()[:4]]
    assert f"the winner #{store.confirmations.standings()[0].id} is the best there" in report
