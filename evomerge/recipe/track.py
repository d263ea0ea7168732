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

    tracking_uri: Optional[str] = Field(None, min_length=1, description="Where MLflow stores the run; default: "
                                                                         "MLflow's, e.g. $MLFLOW_TRACKING_URI.")
    experiment: str = Field("evomerge", min_length=1, description="The MLflow experiment the run is logged under.")


class WandbSpec(_Strict):
    """Weights & Biases' own names; `mode: offline` writes the run under $WANDB_DIR for `wandb sync`."""

    project: str = Field("evomerge", min_length=1, description="The W&B project the run is logged to.")
    entity: Optional[str] = Field(None, min_length=1, description="The W&B user or team; default: W&B's.")
    mode: Optional[Literal["online", "offline", "disabled"]] = Field(
        None, description="W&B's mode; default: W&B's ($WANDB_MODE, else online).")


class TrackSpec(_Strict):
    """The experiment trackers a search logs to, each off unless given."""

    mlflow: switchable(MlflowSpec) = Field(None, description="Log to MLflow (`true`: the defaults); default: off.")
    wandb: switchable(WandbSpec) = Field(None, description="Log to Weights & Biases (`true`: the defaults); "
                                                           "default: off.")

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None
