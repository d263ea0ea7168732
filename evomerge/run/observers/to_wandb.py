"""Weights & Biases: one W&B run per evomerge run (`id` kept in RUN/trackers.json, resumed with
`resume="allow"`). Each evaluation is a history row at its step, with its status and operator;
the run's settings and gene ranges are its config; at the end the report table goes to the
summary and the report files and plots into a `evomerge-report` artifact."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import wandb

from evomerge.recipe.track import WandbSpec
from evomerge.run.observers.tracker import RunInfo, Tracker
from evomerge.run.store import Evaluation

ARTIFACT_TYPE = "evomerge-report"


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, spec: WandbSpec, info: RunInfo, quiet: bool = False):
        super().__init__(info)
        self.spec = spec
        self.quiet = quiet
        self.run: Optional[Any] = None

    def open(self, run_id: Optional[str]) -> str:
        self.run = wandb.init(project=self.spec.project, entity=self.spec.entity, mode=self.spec.mode,
                              id=run_id, resume="allow", name=self.info.name,
                              config=None if run_id else self.info.params, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=self.quiet))
        return self.run.id

    def log(self, step: int, values: Dict[str, float], evaluation: Evaluation) -> None:
        self.run.log({**values, "status": evaluation.status, "operator": evaluation.operator}, step=step)

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        rows = report["rows"]
        columns = list(rows[0]["scores"]) if rows else []
        self.run.summary["report"] = wandb.Table(
            columns=["model", "role", *columns, "mean"],
            data=[[r["name"], r["role"], *(r["scores"][c]["value"] for c in columns), r["mean"]] for r in rows])
        artifact = wandb.Artifact(re.sub(r"[^\w.-]+", "-", f"{self.info.name}-report"), type=ARTIFACT_TYPE)
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run, self.run_id = None, None
