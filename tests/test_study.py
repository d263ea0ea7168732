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
from evomerge.run.loop import SearchOptions, start_search
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


class TrialsSeen:
    """An observer after the study: what `optuna.load_study` shows as each evaluation is stored."""

    name = "trials seen"

    def __init__(self, storage: str):
        self.storage = storage
        self.seen = []

    def rewrite(self, finished):
        pass

    def added(self, evaluation):
        trials = optuna.load_study(study_name="run", storage=self.storage).trials
        self.seen.append((evaluation.id, [t.user_attrs["evaluation_id"] for t in trials]))

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
    search.run()
    search.store.close()
    return directory / "run", storage, seen


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


def test_evomerge_study_rebuilds_the_same_study_from_the_run_store(raced_run):
    run, storage, _ = raced_run
    before = optuna.load_study(study_name="run", storage=storage).trials
    (run / "study.db").unlink()
    result = CliRunner().invoke(main, ["study", str(run)])
    assert result.exit_code == 0, result.output
    assert f"{len(before)} trials in study 'run': optuna.load_study(study_name='run', storage='{storage}')" in result.output
    after = optuna.load_study(study_name="run", storage=storage).trials
    assert [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values, t.datetime_complete)
            for t in after] == [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values,
                                 t.datetime_complete) for t in before]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_optuna_dashboard_serves_the_run(raced_run):
    run, storage, _ = raced_run
    port = _free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage,
                                  "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert dashboard.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.2)
        [summary] = studies
        assert summary["study_name"] == "run" and summary["directions"] == ["maximize"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        trials = _trials(storage)
        assert len(detail["trials"]) == len(trials)
        for served in detail["trials"]:
            attributes = {a["key"]: a["value"] for a in served["user_attrs"]}
            trial = trials[int(attributes["evaluation_id"])]
            assert served["state"] == trial.state.name.capitalize()
            assert {p["name"]: p["param_internal_value"] for p in served["params"]} == trial.params
            assert served.get("values") == trial.values
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


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
