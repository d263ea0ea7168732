"""Every run is an Optuna study too: RUN/study.db, live while the search runs, read with Optuna
itself and served by optuna-dashboard; `evomerge study RUN` rebuilds it from the run store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.zoo.recipe import write_demo_recipe

# Every fifth custom-fitness call fails, and racing stops the weak candidates early: all three states.
FLAKY = textwrap.dedent('''
    calls = 0

    def score(model, tokenizer):
        global calls
        calls += 1
        if calls % 5 == 3:
            raise RuntimeError("the custom fitness failed")
        return 0.0
''')


def _wait_for(condition, what: str, timeout: float = 300.0) -> None:
    """Return once `condition()` holds; fail naming `what` if it does not within `timeout` seconds (a bound
    for a hung process on a loaded machine, not a guess at how long it takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.1)


class Dashboard:
    """`optuna-dashboard STORAGE` on 127.0.0.1 and a free port, as a user starts it; its HTTP API."""

    def __init__(self, storage: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage,
                                         "--host", "127.0.0.1", "--port", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self._started, "optuna-dashboard to serve the study")

    def _started(self) -> bool:
        assert self.process.poll() is None, "optuna-dashboard exited"
        try:
            [self.study] = self.get("/api/studies")["study_summaries"]
        except OSError:
            return False
        return True

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def trials(self):
        return self.get(f"/api/studies/{self.study['study_id']}")["trials"]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


class TrialsSeen:
    """An observer after the study: what `optuna.load_study` shows as each evaluation is stored,
    and what optuna-dashboard (started at the third) serves while the search writes."""

    name = "trials seen"

    def __init__(self, storage: str):
        self.storage = storage
        self.seen = []
        self.served = []
        self.dashboard = None

    def rewrite(self, finished):
        pass

    def added(self, evaluation):
        trials = optuna.load_study(study_name="run", storage=self.storage).trials
        self.seen.append((evaluation.id, [t.user_attrs["evaluation_id"] for t in trials]))
        if len(self.seen) == 3:
            self.dashboard = Dashboard(self.storage)
        if len(self.seen) in (3, 8, 12):  # the search waits here, so no trial is written meanwhile
            _wait_for(lambda: len(self.dashboard.trials()) >= len(self.seen),  # it re-reads trials every 2 s
                      f"optuna-dashboard to serve {len(self.seen)} trials")
            self.served.append((len(self.seen), len(self.dashboard.trials())))

    def finished(self, report, files):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def raced_run(tmp_path_factory, zoo):
    directory = tmp_path_factory.mktemp("study")
    (directory / "flaky.py").write_text(FLAKY)
    recipe = write_demo_recipe(directory, zoo["dir"], confirm=None, fitness="flaky:score",
                               eval={"limit": 40, "racing": {"stages": [0.3, 1.0], "confidence": 0.75}},
                               searcher={"name": "ga", "population": 6, "elitism": 1})
    search = start_search(recipe, directory / "run", SearchOptions(evaluations=12, quiet=True))
    storage = f"sqlite:///{directory / 'run' / 'study.db'}"
    seen = TrialsSeen(storage)
    search.store.views.watch(seen)
    try:
        search.run()
        search.store.close()
        yield directory / "run", storage, seen
    finally:
        if seen.dashboard:
            seen.dashboard.stop()


def _trials(storage: str):
    return {t.user_attrs["evaluation_id"]: t for t in optuna.load_study(study_name="run", storage=storage).trials}


def test_the_study_shows_each_evaluation_as_it_is_stored(raced_run):
    run, storage, seen = raced_run
    stored = RunStore.open(run).evaluations.finished()
    finish_order = [e.id for e in sorted(stored, key=lambda e: (e.created, e.id))]
    assert [ids for _, ids in seen.seen] == [finish_order[:n + 1] for n in range(len(stored))]


def test_every_evaluation_is_a_trial_with_its_genes_fitness_state_and_metrics(raced_run):
    run, storage, _ = raced_run
    store = RunStore.open(run)
    stored = store.evaluations.finished()
    genes = [g["name"] for g in store.meta("genes")]
    study = optuna.load_study(study_name="run", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["fitness"]
    trials = _trials(storage)
    assert sorted(trials) == [e.id for e in stored]
    states = {e.status: set() for e in stored}
    for evaluation in stored:
        trial = trials[evaluation.id]
        states[evaluation.status].add(trial.state.name)
        assert trial.params == dict(zip(genes, evaluation.genotype))
        assert trial.distributions["weight[pair]@0"] == optuna.distributions.FloatDistribution(0.0, 1.5)
        assert trial.user_attrs["operator"] == evaluation.operator and trial.user_attrs["metrics"] == evaluation.metrics
        assert trial.user_attrs["documents"] == evaluation.documents
        if evaluation.ok:
            assert trial.values == [evaluation.fitness]
        if evaluation.raced:  # valued at its estimate, which is also its only stage's
            assert trial.values == [evaluation.fitness] and trial.intermediate_values == {1: evaluation.fitness}
        if evaluation.failed:
            assert trial.values is None and trial.user_attrs["error"] == evaluation.error
    assert states == {"ok": {"COMPLETE"}, "failed": {"FAIL"}, "raced": {"PRUNED"}}
    assert study.best_trial.user_attrs["evaluation_id"] == store.evaluations.ranked()[0].id


@pytest.mark.slow
def test_optuna_dashboard_serves_the_run_while_it_searches(raced_run):
    run, storage, seen = raced_run
    # started after the third evaluation, it served the trials written while the search went on
    assert seen.served == [(3, 3), (8, 8), (12, 12)]
    dashboard = seen.dashboard
    assert dashboard.study["study_name"] == "run" and dashboard.study["directions"] == ["maximize"]
    trials = _trials(storage)
    served = dashboard.trials()
    assert len(served) == len(trials)
    for trial in served:
        attributes = {a["key"]: a["value"] for a in trial["user_attrs"]}
        stored = trials[int(attributes["evaluation_id"])]
        assert trial["state"] == stored.state.name.capitalize()
        assert {p["name"]: p["param_internal_value"] for p in trial["params"]} == stored.params
        assert trial.get("values") == stored.values


def test_evomerge_study_rebuilds_the_same_study_from_the_run_store(raced_run):
    """Last of the tests on this run: it replaces the study.db the dashboard above had open."""
    run, storage, _ = raced_run
    before = optuna.load_study(study_name="run", storage=storage).trials
    (run / "study.db").unlink()
    result = CliRunner().invoke(main, ["study", str(run)])
    assert result.exit_code == 0, result.output
    said = f"{len(before)} trials in study 'run': optuna.load_study(study_name='run', storage='{storage}')"
    assert said in result.output and f"optuna-dashboard {storage}" in result.output
    after = optuna.load_study(study_name="run", storage=storage).trials
    assert [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values, t.datetime_complete)
            for t in after] == [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values,
                                 t.datetime_complete) for t in before]


@pytest.mark.slow
def test_separate_objectives_are_the_trials_values(demo_recipe, tmp_path):
    recipe = demo_recipe(confirm=None, eval={"limit": 20}, objectives="separate",
                         searcher={"name": "optuna", "sampler": "nsga2", "batch": 4})
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=3, quiet=True))
    search.run()
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 4
    assert study.metric_names == [f"zoo_{s}_search.acc" for s in ("pair", "rev", "sort", "shift")]
    assert [t.values for t in study.trials] == [e.objectives for e in search.store.evaluations.finished()]
