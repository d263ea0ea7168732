"""Experiment trackers (`evomerge.track`): a search on the tiny zoo logged to MLflow (a local file
store) and to W&B (offline), read back with MLflow's client and from W&B's own run file."""

from __future__ import annotations

import logging
import sys

import optuna
import pytest
from mlflow import MlflowClient
from wandb_records import offline_run, runs

from evomerge.errors import EvomergeError
from evomerge.outputs.finish import finish_run
from evomerge.recipe.loading import load_recipe
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

# One search task and one report task keep the search and the report table quick.
FAST = {"eval": {"limit": 20}, "searcher": {"name": "cma", "popsize": 4}, "confirm": None,
        "tasks": [{"name": "zoo_pair_search", "metric": "acc"}], "report_tasks": ["zoo_pair_report"]}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """MLflow's file store (in maintenance mode, so allowed explicitly) and W&B offline, both in tmp_path."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return {"mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "zoo"},
            "wandb": {"project": "zoo", "mode": "offline"}}


@pytest.mark.slow
def test_every_evaluation_is_logged_once_across_a_resume_and_the_report_at_the_end(demo_recipe, tmp_path, offline):
    run = tmp_path / "run"
    first = start_search(demo_recipe(**FAST, track=offline), run, SearchOptions(evaluations=4, quiet=True))
    first.run()
    first.store.close()  # as when its process ends: W&B's run is let go
    search = resume_search(run, RunOptions(quiet=True), evaluations=6)  # the same tracker runs go on
    search.run()
    finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    stored = sorted(RunStore.open(run).evaluations.finished(), key=lambda e: (e.created, e.id))
    assert len(stored) == 6
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{run / 'study.db'}")  # caught up on resume too
    assert [t.user_attrs["evaluation_id"] for t in study.trials] == [e.id for e in stored]
    best = [max(e.fitness for e in stored[:n + 1] if e.ok) for n in range(len(stored))]

    client = MlflowClient(offline["mlflow"]["tracking_uri"])
    [found] = client.search_runs([client.get_experiment_by_name("zoo").experiment_id])
    history = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(found.info.run_id, key),
                                                        key=lambda m: m.step)]
               for key in ("evaluation", "fitness", "best_fitness", "gene/weight_pair_0", "zoo_pair_search/acc")}
    assert history["evaluation"] == [(n + 1, e.id) for n, e in enumerate(stored)]  # each once, in finish order
    assert history["fitness"] == [(n + 1, e.fitness) for n, e in enumerate(stored)]
    assert [value for _, value in history["best_fitness"]] == best
    assert [value for _, value in history["gene/weight_pair_0"]] == [e.genotype[0] for e in stored]
    assert [value for _, value in history["zoo_pair_search/acc"]] == [e.metrics["zoo_pair_search"]["acc"]
                                                                      for e in stored]
    assert found.data.params["searcher"] == "cma" and found.data.params["gene/weight_pair_0"] == "[0.0, 1.5]"
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "report")}
    assert {"report/report.md", "report/report.json", "report/best.yaml", "report/fitness.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(found.info.run_id)} >= {"recipe.yaml", "report"}

    [run_id] = runs(tmp_path)  # the resumed process wrote to the same W&B run
    logged = offline_run(tmp_path, run_id)
    rows = [row for row in logged["history"] if "evaluation" in row]
    assert [(row["_step"], row["evaluation"]) for row in rows] == [(n + 1, e.id) for n, e in enumerate(stored)]
    assert [row["status"] for row in rows] == [e.status for e in stored]
    assert [row["best_fitness"] for row in rows] == best
    assert [row["gene/weight[pair]@0"] for row in rows] == [e.genotype[0] for e in stored]
    assert [row["materialize_seconds"] for row in rows] == [e.materialize_seconds for e in stored]
    assert logged["config"]["searcher"] == "cma"
    assert logged["summary"]["report"]["_type"] == "table-file"
    [report] = [a for a in logged["artifacts"] if a["type"] == "evomerge-report"]
    assert {"report.md", "report.json", "best.yaml", "fitness.png"} <= set(report["files"])


def test_a_failing_tracker_is_warned_about_and_loses_no_result(demo_recipe, tmp_path, offline, caplog):
    (tmp_path / "not-a-folder").write_text("")
    broken = {"mlflow": {"tracking_uri": (tmp_path / "not-a-folder" / "mlruns").as_uri()}}
    search = start_search(demo_recipe(**FAST, track=broken), tmp_path / "run", SearchOptions(evaluations=3, quiet=True))
    with caplog.at_level(logging.WARNING):
        search.run()
    assert search.store.evaluations.count() == 3
    warned = [r.getMessage() for r in caplog.records if r.name == "evomerge.run.store.views"]
    assert len(warned) == 1 and warned[0].startswith("mlflow failed (NotADirectoryError")  # once, then skipped
    assert (tmp_path / "run" / "study.db").is_file()  # the other observers went on


@pytest.mark.parametrize("track, key, message", [
    ({"wandb": {"mode": "sometimes"}}, "evomerge.track.wandb.mode", "Input should be 'online', 'offline' or"),
    ({"mlflow": {"experiment": ""}}, "evomerge.track.mlflow.experiment", "String should have at least 1 character"),
    ({"mlflow": {"uri": "x"}}, "evomerge.track.mlflow.uri", "unknown key"),
    ({"neptune": {}}, "evomerge.track.neptune", "unknown key"),
    ({"mlflow": "sqlite:///mlflow.db"}, "evomerge.track.mlflow", "Input should be a valid dictionary"),
])
def test_a_bad_track_value_is_one_line_naming_the_key(track, key, message, demo_recipe):
    with pytest.raises(EvomergeError, match=f"{key}: {message}") as raised:
        load_recipe(demo_recipe(track=track))
    assert "\n" not in str(raised.value)


def test_a_missing_tracker_library_names_the_extra_before_the_run_exists(demo_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importlib finds no such module
    with pytest.raises(EvomergeError, match=r"evomerge\.track\.wandb: wandb is not installed; .*'evomerge\[track\]'"):
        start_search(demo_recipe(**FAST, track={"wandb": {"mode": "offline"}}), tmp_path / "run",
                     SearchOptions(quiet=True))
    assert not (tmp_path / "run").exists()
