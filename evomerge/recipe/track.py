"""`evomerge.track`: the experiment trackers a search logs to, validated with the rest of the section.

Each finished evaluation is logged as it arrives (genes, metrics, fitness, documents, timings,
status and the best so far), and the report and plots at the end; see run/observers/."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowSpec(_Strict):
    """MLflow's own names: a tracking URI (default: MLflow's, e.g. $MLFLOW_TRACKING_URI) and an experiment."""

    tracking_uri: Optional[str] = Field(None, min_length=1)
    experiment: str = Field("evomerge", min_length=1)


class WandbSpec(_Strict):
    """Weights & Biases' own names; `mode: offline` writes the run under $WANDB_DIR for `wandb sync`."""

    project: str = Field("evomerge", min_length=1)
    entity: Optional[str] = Field(None, min_length=1)
    mode: Optional[Literal["online", "offline", "disabled"]] = None  # default: wandb's ($WANDB_MODE, else online)


class TrackSpec(_Strict):
    mlflow: Optional[MlflowSpec] = None  # `true` for the defaults
    wandb: Optional[WandbSpec] = None

    @field_validator("mlflow", "wandb", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None
