"""Every run is an Optuna study too: RUN/study.db holds one trial per finished evaluation, written
as each one is stored, so `optuna.load_study`, Optuna's plots and `optuna-dashboard` work on a run,
live. The run store stays the source of truth: the study is a view, caught up from it whenever the
run is opened (and rebuilt whole by `evomerge study RUN`).

A trial: the genes as params (FloatDistribution over each gene's range), the fitness as its value
(maximized; the objectives as values with `objectives: separate`), state COMPLETE (ok), FAIL
(failed) or PRUNED (raced, valued at its estimate), racing stages' estimates as intermediate
values, and as user attributes the evaluation id, operator, generation, parents, per-task
metrics, documents, timings, device and error.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from evomerge import log_levels
from evomerge.run.store import Evaluation, RunStore

STUDY_DB = "study.db"
STATES = {"ok": TrialState.COMPLETE, "failed": TrialState.FAIL, "raced": TrialState.PRUNED}


def storage_url(store: RunStore) -> str:
    return f"sqlite:///{(store.directory / STUDY_DB).resolve()}"


def study_name(store: RunStore) -> str:
    return store.directory.resolve().name


class Study:
    name = "the Optuna study"

    def __init__(self, store: RunStore):
        self.store = store
        self.objectives: List[str] = store.meta_or("objectives", ["fitness"])
        self.distributions = {g["name"]: FloatDistribution(g["low"], g["high"]) for g in store.meta("genes")}
        self._storage: Optional[optuna.storages.RDBStorage] = None
        self._study: Optional[optuna.Study] = None

    def rebuild(self) -> optuna.Study:
        """The study anew from the store (a deleted or stale study.db)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):  # SQLite's write-ahead log and its index go with the file
            (self.store.directory / (STUDY_DB + suffix)).unlink(missing_ok=True)
        self.rewrite(self.store.evaluations.in_finish_order())
        return self._study

    def rewrite(self, finished: Sequence[Evaluation]) -> None:
        """Add the trials the study lacks, in the order the run finished them, as given (a study whose
        trials the store does not hold, or hold otherwise, is rebuilt)."""
        study = self._opened()
        have = {t.user_attrs.get("evaluation_id"): t.state for t in study.get_trials(deepcopy=False)}
        states = {e.id: STATES[e.status] for e in finished}
        if any(states.get(id_) != state for id_, state in have.items()):
            self.rebuild()
            return
        stages = self.store.events.stages()
        with log_levels.at_least("optuna", logging.WARNING):
            study.add_trials([self.trial(e, stages.get(e.id, {}))
                              for e in finished if e.id not in have])

    def added(self, evaluation: Evaluation) -> None:
        stages = self.store.events.stages(evaluation.id).get(evaluation.id, {})
        with log_levels.at_least("optuna", logging.WARNING):
            self._opened().add_trial(self.trial(evaluation, stages))

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        """Nothing more: the study has every evaluation already."""

    def close(self) -> None:
        if self._storage is not None:
            self._storage.engine.dispose()
            self._storage, self._study = None, None

    def _opened(self) -> optuna.Study:
        if self._study is None:
            with log_levels.at_least("optuna", logging.WARNING):
                self._storage = optuna.storages.RDBStorage(storage_url(self.store),
                                                           engine_kwargs={"connect_args": {"timeout": 30}})
                with self._storage.engine.connect() as connection:  # readers (a dashboard) never block the run
                    connection.exec_driver_sql("PRAGMA journal_mode=WAL")
                self._study = optuna.create_study(storage=self._storage, study_name=study_name(self.store),
                                                  directions=["maximize"] * len(self.objectives), load_if_exists=True)
                if self._study.metric_names is None:
                    with warnings.catch_warnings():  # set_metric_names is marked experimental
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        self._study.set_metric_names(self.objectives)
        return self._study

    def trial(self, evaluation: Evaluation, stages: Dict[int, float]) -> FrozenTrial:
        state = STATES[evaluation.status]
        values = None
        if state == TrialState.COMPLETE:
            values = list(evaluation.objectives) if len(self.objectives) > 1 else [evaluation.fitness]
        elif state == TrialState.PRUNED and len(self.objectives) == 1:
            values = [evaluation.fitness]  # its estimate from the documents scored, as Optuna values a pruned trial
        seconds = (evaluation.materialize_seconds or 0) + (evaluation.evaluate_seconds or 0)
        attributes = {"evaluation_id": evaluation.id, "operator": evaluation.operator,
                      "generation": evaluation.generation, "parents": evaluation.parents,
                      "metrics": evaluation.metrics, "documents": evaluation.documents,
                      "fitness": evaluation.fitness, "materialize_seconds": evaluation.materialize_seconds,
                      "evaluate_seconds": evaluation.evaluate_seconds, "device": evaluation.device,
                      "worker": evaluation.worker}
        if evaluation.error:
            attributes["error"] = evaluation.error
        # genes are stored within their range; a clamp only undoes from_unit's last-bit rounding
        params = {name: min(max(value, d.low), d.high)
                  for (name, d), value in zip(self.distributions.items(), evaluation.genotype)}
        return FrozenTrial(number=0, trial_id=0, state=state, value=None, values=values,
                           datetime_start=datetime.datetime.fromtimestamp(evaluation.created - seconds),
                           datetime_complete=datetime.datetime.fromtimestamp(evaluation.created),
                           params=params, distributions=dict(self.distributions), user_attrs=attributes,
                           system_attrs={}, intermediate_values={int(k): v for k, v in stages.items()})
