"""Confirm before crowning: the finalists the surrogate estimates best, and the start, are scored on a
third split; the best finalist there wins only if it beats the start beyond the noise."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.outputs import crowning
from evomerge.run.store import RunStore
from evomerge.scoring.paired import paired_difference

CONFIRM_TASKS = [f"zoo_{skill}_confirm" for skill in ("pair", "rev", "sort", "shift")]
TERMS = [(task, "acc", 0.25, 1.0) for task in CONFIRM_TASKS]


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


def test_the_finalists_and_the_start_are_scored_on_the_confirmation_tasks(confirmed_run):
    store = RunStore.open(confirmed_run)
    finished = store.evaluations.finished()
    crown = store.confirmations.crown()
    start = next(e for e in finished if e.operator == "start")
    estimated = crowning.estimates(finished, "surrogate")
    assert crown["start"] == start.id
    assert crown["finalists"] == [e.id for e in crowning.finalists(finished, estimated, 4, start.id)]
    confirmations = store.confirmations.all()
    assert set(confirmations) == {start.id, *crown["finalists"]}
    for confirmation in confirmations.values():  # the mean accuracy over the confirmation tasks
        assert set(confirmation.metrics) == set(CONFIRM_TASKS)
        assert confirmation.fitness == pytest.approx(sum(confirmation.metrics[t]["acc"] for t in CONFIRM_TASKS) / 4)
        assert [len(confirmation.documents[t]["acc"]) for t in CONFIRM_TASKS] == [100] * 4


def test_the_best_finalist_wins_only_beyond_the_noise(confirmed_run):
    store = RunStore.open(confirmed_run)
    crown = store.confirmations.crown()
    confirmations = store.confirmations.all()
    best = max(crown["finalists"], key=lambda i: (confirmations[i].fitness, -i))
    paired = paired_difference(TERMS, confirmations[crown["start"]].documents, confirmations[best].documents)
    assert crown["threshold"] == pytest.approx(crowning.family_z(2.0, 4)) and crown["threshold"] > 2
    assert crown["winner"] == (best if paired.value > crown["threshold"] * paired.stderr else crown["start"])
    winner = store.confirmations.standings()[0]
    assert winner.id == crown["winner"]
    assert (confirmed_run / "best.yaml").read_text() == winner.recipe
    assert store.report("report")["winner_id"] == winner.id


def test_export_rank_1_is_the_crowned_winner(confirmed_run, tmp_path):
    store = RunStore.open(confirmed_run)
    winner = store.confirmations.standings()[0]
    result = CliRunner().invoke(main, ["export", str(confirmed_run), "--out", str(tmp_path / "model"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"This candidate: evaluation #{winner.id} " in (tmp_path / "model" / "README.md").read_text()


def test_the_report_lists_the_finalists_and_says_how_the_crown_was_decided(confirmed_run):
    store = RunStore.open(confirmed_run)
    crown = store.confirmations.crown()
    report = (confirmed_run / "report.md").read_text()
    lines = report.splitlines()
    start = lines.index("| rank | search fitness order | confirmation order |")
    rows = [line.split(" | ") for line in lines[start + 2:start + 6]]
    by_search = [cells[1].split()[0] for cells in rows]
    by_confirmation = [cells[2].split()[0] for cells in rows]
    finalists = [store.evaluations.get(i) for i in crown["finalists"]]
    assert by_search == [f"#{e.id}" for e in sorted(finalists, key=lambda e: (-e.fitness, e.id))]
    confirmed = store.confirmations.all()
    assert by_confirmation == [f"#{i}" for i in sorted(crown["finalists"], key=lambda i: (-confirmed[i].fitness, i))]
    assert "scored on the confirmation tasks zoo_pair_confirm" in report
    assert "Resolution at two standard errors: the 80 search documents" in report
    said = (f"#{crown['winner']} beat the start there by" if crown["winner"] != crown["start"]
            else "No candidate beat the start by more than the noise")
    assert said in report
