"""The `qd` searcher: a map of merges (pyribs' archive), kept in the run store, drawn, exported by cell."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file
from test_resilience import BLOCKING_FITNESS, _start_cli
from weights import assert_same_as_resident, same_tensors

from evomerge.cli import main
from evomerge.merge.materializer import Materializer
from evomerge.outputs.export import candidate_of
from evomerge.outputs.finish import finish_run
from evomerge.outputs.report import MAP_PNG, write_report
from evomerge.run.observers.study import storage_url, study_name
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run.store.schema import DATABASE
from evomerge.run_options import RunOptions
from evomerge.searchers import SearcherSpec, make_searcher
from evomerge.zoo.recipe import write_demo_recipe

QD = {"name": "qd", "batch": 4, "resolution": 5}  # the start, then generations of 4, on a 5 x 5 map
MEASURES = ("zoo_pair_search", "zoo_rev_search")  # the demo's first two search tasks: the default measures


def _qd_recipe(directory: Path, zoo: dict, **evomerge) -> Path:
    return write_demo_recipe(directory, zoo["dir"], **{"eval": {"limit": 10}, "searcher": QD, "confirm": None,
                                                       **evomerge})


@pytest.fixture(scope="module")
def run_dir(zoo, tmp_path_factory) -> Path:
    """One 8-evaluation qd search of the demo (its budget ends inside generation 2), shared by the tests
    that only read it."""
    directory = tmp_path_factory.mktemp("qd")
    start_search(_qd_recipe(directory, zoo), directory / "run", SearchOptions(evaluations=8, quiet=True)).run()
    return directory / "run"


def _cell(value: float) -> int:
    return min(int(value * 5), 4)  # the default range [0, 1] in 5 cells


def test_the_map_keeps_each_cells_best_evaluation_at_its_task_scores(run_dir):
    store = RunStore.open(run_dir)
    archive = store.archive.read()
    evaluations = {e.id: e for e in store.evaluations.finished() if e.ok}
    assert archive.measures == tuple(f"{task}.acc" for task in MEASURES) and archive.shape == (5, 5)
    assert len(archive.elites) > 1
    for elite in archive.elites:
        evaluation = evaluations[elite.evaluation]
        assert elite.measures == tuple(evaluation.metrics[task]["acc"] for task in MEASURES)
        assert elite.objective == evaluation.fitness
        assert elite.cell == tuple(_cell(v) for v in elite.measures)
        in_cell = [e.fitness for e in evaluations.values()
                   if tuple(_cell(e.metrics[task]["acc"]) for task in MEASURES) == elite.cell]
        assert elite.objective == max(in_cell)
    filled = {tuple(_cell(e.metrics[task]["acc"]) for task in MEASURES) for e in evaluations.values()}
    assert {e.cell for e in archive.elites} == filled  # the last generation's 3 results too


def test_the_runs_optuna_study_has_a_trial_per_evaluation_with_its_measures(run_dir):
    store = RunStore.open(run_dir)
    study = optuna.load_study(study_name=study_name(store), storage=storage_url(store))
    evaluations = {e.id: e for e in store.evaluations.finished()}
    assert len(study.trials) == 8
    for trial in study.trials:
        evaluation = evaluations[trial.user_attrs["evaluation_id"]]
        assert trial.value == evaluation.fitness
        assert [trial.user_attrs["metrics"][task]["acc"] for task in MEASURES] == \
               [evaluation.metrics[task]["acc"] for task in MEASURES]


def test_a_failed_candidate_is_ranked_last_and_never_on_the_map():
    searcher = make_searcher(SearcherSpec(name="qd", measures=["a.acc", "b.acc"], batch=4), 3, np.full(3, 0.5), seed=0)
    (start,) = searcher.ask()
    searcher.tell(start.id, None)  # nothing on the map yet
    for proposal in searcher.ask():  # all fail: the emitters start again
        searcher.tell(proposal.id, None)
    assert searcher.elites().elites == ()
    failed = set()
    for _ in range(3):
        for index, proposal in enumerate(searcher.ask()):
            if index % 2:
                failed.add(proposal.id)
                searcher.tell(proposal.id, None)
            else:
                x = proposal.genotype
                searcher.tell(proposal.id, (float(x.sum()),), {"a.acc": float(x[0]), "b.acc": float(x[1])})
    elites = searcher.elites().elites
    assert elites and not failed & {e.evaluation for e in elites}


def test_the_results_of_a_generation_still_out_are_on_the_map_before_the_emitters_learn_them():
    searcher = make_searcher(SearcherSpec(name="qd", measures=["a.acc", "b.acc"], batch=4), 3, np.full(3, 0.5), seed=0)
    (start,) = searcher.ask()
    searcher.tell(start.id, (0.5,), {"a.acc": 0.5, "b.acc": 0.5})
    first, *others = searcher.ask()
    searcher.tell(first.id, (0.9,), {"a.acc": 0.05, "b.acc": 0.95})  # a cell of its own; three still out
    assert [(e.cell, e.evaluation) for e in searcher.elites().elites] == [((0, 9), first.id), ((5, 5), start.id)]
    assert len(searcher.archive) == 1  # ribs' archive, which the emitters see, learns it with its generation


@pytest.mark.slow
def test_resume_after_kill_9_rebuilds_the_map_of_an_uninterrupted_run(zoo, tmp_path):
    (tmp_path / "fitness_under_test.py").write_text(BLOCKING_FITNESS)
    recipe = _qd_recipe(tmp_path, zoo, fitness="fitness_under_test:score")
    start_search(recipe, tmp_path / "reference", SearchOptions(evaluations=9, quiet=True)).run()

    process = _start_cli(recipe, tmp_path / "killed", 9, block_at=4)  # the 3rd of 4 in generation 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = {e.id for e in RunStore.open(tmp_path / "killed").evaluations.finished()}
    assert stored == {0, 1, 2} and {row[2] for row in _map(tmp_path / "killed")} <= stored
    resume_search(tmp_path / "killed", RunOptions(quiet=True)).run()
    assert _map(tmp_path / "killed") == _map(tmp_path / "reference")
    assert len(_map(tmp_path / "reference")) > 1


def _map(run_dir: Path):
    """The archive table's rows, as stored."""
    with sqlite3.connect(run_dir / DATABASE) as db:
        return db.execute("SELECT * FROM archive ORDER BY cell").fetchall()


@pytest.mark.slow
def test_an_elite_exported_by_cell_is_the_scored_one_and_mergekit_yaml_reproduces_it(run_dir, tmp_path):
    store = RunStore.open(run_dir)
    archive = store.archive.read()
    elite = min(archive.elites, key=lambda e: e.objective)  # not the winner
    cell = ",".join(map(str, elite.cell))
    result = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "model"), "--cell", cell,
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"evaluation #{elite.evaluation} " in card and f"On the map of the search: cell {cell} of the 5 × 5" in card
    exported = load_file(tmp_path / "model" / "model.safetensors")
    materializer = Materializer(candidate_of(store, store.evaluations.get(elite.evaluation)).merge,
                                options=RunOptions(quiet=True))
    materializer.materialize(candidate_of(store, store.evaluations.get(elite.evaluation)))
    assert_same_as_resident(exported, materializer.model)
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(tmp_path / "model" / "mergekit_config.yml"), str(tmp_path / "again")],
                   check=True, capture_output=True)
    assert same_tensors(load_file(tmp_path / "again" / "model.safetensors"), exported)

    nearest = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "near"), "--measures",
                                        ",".join(f"{v + 0.01}" for v in elite.measures), "--quiet"])
    assert nearest.exit_code == 0, nearest.output
    assert f"evaluation #{elite.evaluation} " in (tmp_path / "near" / "README.md").read_text()


def test_an_empty_cell_is_refused_naming_the_filled_ones(run_dir, tmp_path):
    filled = {e.cell for e in RunStore.open(run_dir).archive.read().elites}
    empty = next((i, j) for i in range(5) for j in range(5) if (i, j) not in filled)
    result = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "m"),
                                       "--cell", f"{empty[0]},{empty[1]}"])
    assert result.exit_code == 2 and f"--cell: cell {empty[0]},{empty[1]} of the map is empty; filled" in result.output


def test_a_measure_that_is_not_a_search_task_is_refused_at_load_in_one_line(zoo, tmp_path):
    recipe = _qd_recipe(tmp_path, zoo, searcher={**QD, "measures": ["zoo_pair_search", "zoo_pair_report"]})
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2
    assert result.output == (f"error: {recipe}: evomerge.searcher.measures[1]: measure 'zoo_pair_report' is neither a "
                             "search task nor a custom fitness term; expected one of zoo_pair_search, zoo_rev_search, "
                             "zoo_sort_search, zoo_shift_search\n")
    assert not (tmp_path / "run").exists()


def test_the_report_draws_the_map_with_the_start_and_parents_and_lists_its_pareto_front(zoo, tmp_path):
    recipe = _qd_recipe(tmp_path, zoo)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=5, quiet=True))
    search.run()
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    archive = search.store.archive.read()
    front = report["map_front"]["elites"]
    assert front and {e["id"] for e in front} <= {e.evaluation for e in archive.elites}
    assert not any(all(b >= a for a, b in zip(e["measures"], other.measures)) and list(other.measures) != e["measures"]
                   for e in front for other in archive.elites)  # nothing on the map dominates a front elite
    assert set(report["map_parents"]) == {"base", "pair", "rev", "sort", "shift"}
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "The map's Pareto front" in markdown and all(f"| #{e['id']} |" in markdown for e in front)

    written = write_report(tmp_path / "run")
    assert tmp_path / "run" / MAP_PNG in written
    page = (tmp_path / "run" / "report.html").read_text()
    assert f'src="{MAP_PNG}"' in page and "the star is the starting point, the diamonds the parents" in page
