"""`evomerge.track`: the experiment trackers a search logs to, validated with the rest of the section.

Each finished evaluation is logged as it arrives (genes, metrics, fitness, documents, timings,
status and the best so far), and the report and plots at the end; see run/observers/."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _on_off(value: Any) -> Any:
    return {} if value is True else None if value is False else value


def switchable(spec: type) -> Any:
    """An optional block that `true` turns on with its defaults and `false` off; the JSON Schema says so too."""
    return Annotated[Optional[spec], BeforeValidator(_on_off, json_schema_input_type=Optional[Union[bool, spec]])]


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
    mlflow: switchable(MlflowSpec) = None
    wandb: switchable(WandbSpec) = None

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None
