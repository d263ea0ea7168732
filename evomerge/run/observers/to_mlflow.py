"""MLflow: one MLflow run per evomerge run, through MlflowClient (no global active run, so a
user's own MLflow use in the same process is left alone). Each evaluation's numbers are metrics
at its step; the run's settings and gene ranges are params; the recipe, report and plots artifacts."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from evomerge.recipe.track import MlflowSpec
from evomerge.run.observers.tracker import RunInfo, Tracker
from evomerge.run.store import Evaluation

BATCH = {"metrics": 1000, "params": 100}  # MLflow's log_batch limits


def key(name: str) -> str:
    """A name MLflow accepts (letters, digits, _ - . / space and colon): `weight[pair]@0` -> `weight_pair_0`."""
    return re.sub(r"[^\w./\- :]+", "_", name).strip("_")


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, spec: MlflowSpec, info: RunInfo):
        super().__init__(info)
        self.spec = spec

    def open(self, run_id: Optional[str]) -> str:
        self.client = MlflowClient(tracking_uri=self.spec.tracking_uri)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        experiment = self.client.get_experiment_by_name(self.spec.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.spec.experiment)
        run = self.client.create_run(experiment_id, run_name=self.info.name,
                                     tags={"evomerge.run_dir": str(self.info.directory.resolve())})
        params = [Param(key(name), str(value)) for name, value in self.info.params.items()]
        self._batches(run.info.run_id, params=params)
        self.client.log_text(run.info.run_id, self.info.recipe_text, "recipe.yaml")
        return run.info.run_id

    def log(self, step: int, values: Dict[str, float], evaluation: Evaluation) -> None:
        now = int(time.time() * 1000)
        self._batches(self.run_id, metrics=[Metric(key(name), value, now, step) for name, value in values.items()])

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path="report")
        self.client.set_terminated(self.run_id)

    def _batches(self, run_id: str, **entries: List[Any]) -> None:
        for kind, items in entries.items():
            for start in range(0, len(items), BATCH[kind]):
                self.client.log_batch(run_id, **{kind: items[start:start + BATCH[kind]]})
