"""Nothing lost, nothing half-written: a full disk said in one line and resumed from, views replaced
whole, observers in the order the run finished its candidates, confirmations that follow a resume."""

from __future__ import annotations

import errno
import textwrap

import pytest
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.outputs.confirmation import confirm_finalists, confirmation_documents, rankings
from evomerge.recipe.loading import load_recipe
from evomerge.run import start
from evomerge.run.observers.tracker import RunInfo, Tracker
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

BETTER_EACH_CALL = textwrap.dedent('''
    from pathlib import Path

    CALLS = Path(__file__).with_name("calls")  # counted in a file: across processes and loads of this module

    def score(model, tokenizer):
        calls = int(CALLS.read_text()) + 1 if CALLS.exists() else 1
        CALLS.write_text(str(calls))
        return float(calls)
''')


def _recipe(demo_recipe, tmp_path, **evomerge):
    (tmp_path / "fitness_under_test.py").write_text(BETTER_EACH_CALL)
    return demo_recipe(**{"eval": {"limit": 5}, "searcher": {"name": "random", "batch": 1}, "confirm": None,
                          "report_tasks": [], "fitness": "fitness_under_test:score", **evomerge})


def test_a_full_disk_ends_the_run_in_one_line_and_everything_stored_resumes(demo_recipe, tmp_path, monkeypatch):
    recipe, run = _recipe(demo_recipe, tmp_path), tmp_path / "run"
    add_result = RunStore.add_result

    def then_the_disk_fills(store, *arguments):  # SQLite's own "database or disk is full", at the store's size
        add_result(store, *arguments)
        if store.evaluations.count() == 3:
            pages = store.db.execute("PRAGMA page_count").fetchone()[0]
            store.db.execute(f"PRAGMA max_page_count = {pages}")

    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "add_result", then_the_disk_fills)
        result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(run), "--evaluations", "40", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output == (f"error: {run}: the disk is full (database or disk is full); everything stored so far "
                             "is kept: free some space, or move the run directory to a disk with space, and continue "
                             f"with `evomerge resume {run}`\n")
    stored = {e.id: e.created for e in RunStore.open(run).evaluations.finished()}
    assert 3 <= len(stored) < 40

    result = CliRunner().invoke(main, ["resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    store = RunStore.open(run)
    assert store.evaluations.count() == 40 and not store.evaluations.pending()
    after = {e.id: e.created for e in store.evaluations.finished()}
    assert all(after[i] == created for i, created in stored.items()), "a stored evaluation was redone"


def test_a_view_is_replaced_whole_or_left_as_it_was(demo_recipe, tmp_path, monkeypatch):
    run = tmp_path / "run"
    start_search(_recipe(demo_recipe, tmp_path), run, SearchOptions(evaluations=2, quiet=True)).run()
    before = {name: (run / name).read_text() for name in ("best.yaml", "evaluations.jsonl")}
    store = RunStore.open(run)

    def no_space(*arguments):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.replace", no_space)
    with pytest.raises(EvomergeError, match=f"^{run}: the disk is full .*No space left on device"):
        store.views.rewrite()
    assert {name: (run / name).read_text() for name in before} == before
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".partial")) == []


class Recording(Tracker):
    name = "recording"

    def open(self, run_id):
        self.ids = []
        return "recorded"

    def log(self, step, values, evaluation):
        self.ids.append(evaluation.id)


def test_observers_follow_the_order_the_run_told_its_results_not_the_clock(demo_recipe, tmp_path):
    run = tmp_path / "run"
    start_search(_recipe(demo_recipe, tmp_path), run, SearchOptions(evaluations=4, quiet=True)).run()
    store = RunStore.open(run)
    with store.db:  # evaluation 0 finished on a machine whose clock runs ahead (or this one's went back)
        store.db.execute("UPDATE evaluations SET created = created + 3600 WHERE id = 0")
    told = [e.evaluation for e in store.events.all() if e.kind == "tell"]
    assert told == [0, 1, 2, 3]

    tracker = Recording(RunInfo.of(load_recipe(run / start.RECIPE_COPY), store))
    store.views.watch(tracker)
    store.views.rewrite()
    assert tracker.ids == told
    result = CliRunner().invoke(main, ["study", str(run)])
    assert result.exit_code == 0, result.output
    import optuna

    study = optuna.load_study(study_name="run", storage=f"sqlite:///{run / 'study.db'}")
    assert [t.user_attrs["evaluation_id"] for t in study.trials] == told


def _confirm(search) -> None:
    worker = search.worker
    documents = confirmation_documents(search.recipe, search.confirmation, worker.suite, worker.objective, worker.split)
    confirm_finalists(search.store, search.recipe, search.space, worker.materializer, documents, quiet=True)


def test_a_finalist_confirmed_before_a_resume_does_not_outrank_the_new_top(demo_recipe, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(demo_recipe, tmp_path, confirm={"top": 2, "tasks": ["zoo_pair_confirm"], "rank": "score"})
    search = start_search(recipe, run, SearchOptions(evaluations=3, quiet=True))
    search.run()
    _confirm(search)  # each candidate scores better than the one before: 2 and 1 are the finalists, 0 the start
    assert set(search.store.confirmations.all()) == {0, 1, 2}

    resumed = resume_search(run, RunOptions(quiet=True), evaluations=5)
    resumed.run()  # 3 and 4 are the top 2 now, not yet confirmed; the old crown is gone until the run finishes
    store = resumed.store
    assert [e.id for e in store.confirmations.standings()] == [4, 3, 2, 1, 0]  # the search's order
    _confirm(resumed)
    assert set(store.confirmations.all()) == {0, 1, 2, 3, 4}
    crown = store.confirmations.crown()
    assert crown["finalists"] == [4, 3] and crown["winner"] in (0, 3, 4)
    head = {crown["winner"], 3, 4}  # the crowned (a finalist, or the start if neither beat it), then the finalists
    ids = [e.id for e in store.confirmations.standings()]
    assert ids[0] == crown["winner"] and set(ids[:len(head)]) == head
    assert {entry["id"] for entry in rankings(store)["confirmation_order"]} == {3, 4}

