"""Do no harm: a candidate replaces the start recipe only when it beats the start, paired, on documents
that did not select it; without confirmation tasks a seeded share of the search documents is held
back for that, and the search never scores them."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.outputs import crowning
from evomerge.run.store import RunStore
from evomerge.scoring.paired import paired_difference

SEARCH_TASKS = [f"zoo_{skill}_search" for skill in ("pair", "rev", "sort", "shift")]
TERMS = [(task, "acc", 0.25, 1.0) for task in SEARCH_TASKS]


def search(directory, zoo, *, weight: float, gene_range, evaluations: int = 8):
    """The demo recipe from every specialist at `weight`, with no confirmation tasks (documents are held back)."""
    from evomerge.zoo.recipe import write_demo_recipe

    path = write_demo_recipe(directory, zoo["dir"], eval={"limit": 40}, confirm={"top": 3},
                             search=[{"parameter": "weight", "range": gene_range, "layer_groups": 2}],
                             searcher={"name": "random"})
    recipe = yaml.safe_load(path.read_text())
    for entry in recipe["models"]:
        entry["parameters"]["weight"] = weight
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(main, ["search", str(path), "--out", str(directory / "run"),
                                       "--evaluations", str(evaluations), "--quiet"])
    assert result.exit_code == 0, result.output
    return directory / "run"


def test_a_search_whose_candidates_are_all_within_noise_of_the_start_returns_the_start(zoo, tmp_path):
    run = search(tmp_path, zoo, weight=1.0, gene_range=[0.99, 1.01])
    store = RunStore.open(run)
    crown = store.confirmations.crown()
    start = store.evaluations.get(crown["start"])
    assert start.id == 0 and np.allclose(start.genotype, 1.0)  # the searcher's first proposal
    assert crown["beat_start"] is False and crown["winner"] == start.id
    assert store.confirmations.standings()[0].id == start.id
    assert (run / "best.yaml").read_text() == start.recipe
    report = (run / "report.md").read_text()
    assert "No candidate beat the start by more than the noise" in report
    assert f"so the winner is the start (#{start.id}). Closest: #" in report
    assert store.report("report")["winner_id"] == start.id
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "model"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"This candidate: evaluation #{start.id} " in (tmp_path / "model" / "README.md").read_text()


def test_a_search_from_a_poor_start_crowns_a_candidate_the_held_back_documents_confirm(zoo, tmp_path):
    run = search(tmp_path, zoo, weight=0.0, gene_range=[0.0, 1.5])
    store = RunStore.open(run)
    crown = store.confirmations.crown()
    assert crown["beat_start"] is True and crown["winner"] != crown["start"]
    confirmations = store.confirmations.all()
    paired = paired_difference(TERMS, confirmations[crown["start"]].documents,
                               confirmations[crown["winner"]].documents)
    assert paired.value > crown["threshold"] * paired.stderr
    assert crown["threshold"] == pytest.approx(crowning.family_z(2.0, 3))
    winner = store.confirmations.standings()[0]
    assert winner.id == crown["winner"] and (run / "best.yaml").read_text() == winner.recipe
    assert f"#{winner.id} beat the start there by {paired.value:+.4f}" in (run / "report.md").read_text()
    # the held-back documents: a seeded quarter of each search task's 150, never scored by the search
    held = {task: len(confirmations[crown["start"]].documents[task]["acc"]) for task in SEARCH_TASKS}
    assert held == {task: 38 for task in SEARCH_TASKS}
    assert {e.documents for e in store.evaluations.finished()} == {40 * 4}
    assert crown["source"].startswith("152 documents of the search tasks held back from the search (25%")


def test_the_held_back_documents_are_seeded_and_apart_from_the_searched_ones(zoo):
    from evomerge.paths import TASKS_DIR
    from evomerge.scoring import TaskSuite

    suite = TaskSuite(SEARCH_TASKS[:2], [TASKS_DIR])
    split = suite.split(0.25, seed=3, limit=40)
    for task in suite.names:
        assert len(split.held_back[task]) == 38 and len(split.search[task]) == 40
        assert not set(split.held_back[task]) & set(split.search[task])
        assert split.search[task] == sorted(split.search[task])  # the dataset's order, as lm-eval's limit takes it
    assert suite.split(0.25, seed=3, limit=40) == split
    assert suite.split(0.25, seed=4, limit=40).held_back != split.held_back


def test_the_surrogate_picks_finalists_no_worse_than_the_luckiest_score():
    """Candidates on a gentle plateau, each score noisy: the single best score is mostly luck. Over twenty
    such searches the surrogate's first finalist is at least as good in truth as the luckiest one in most,
    and better on average."""
    from evomerge.run.store import Evaluation

    gaps = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, size=(48, 4))
        truth = 0.8 - 0.3 * ((x - 0.6) ** 2).sum(axis=1)
        fitness = truth + rng.normal(0, 0.03, size=len(x))
        evaluations = [Evaluation(id=i, generation=0, genotype=list(map(float, g)), recipe="", status="ok",
                                  fitness=float(f)) for i, (g, f) in enumerate(zip(x, fitness))]
        luckiest = crowning.finalists(evaluations, crowning.estimates(evaluations, "score"), 1, None)[0]
        surrogate = crowning.finalists(evaluations, crowning.estimates(evaluations, "surrogate"), 1, None)[0]
        gaps.append(truth[surrogate.id] - truth[luckiest.id])
    assert sum(gap >= 0 for gap in gaps) >= 15 and np.mean(gaps) > 0
