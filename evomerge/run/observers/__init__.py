"""Observers of a run's finished evaluations, attached to the store's views by the loop: the run's
Optuna study (study.py) and the experiment trackers of the recipe's `evomerge.track` (tracker.py,
to_mlflow.py, to_wandb.py). Each hears every finished evaluation once it is stored, catches up from
the store when the run is opened, and none can lose a result (run/store/views.py)."""

from __future__ import annotations

import importlib.util
from typing import List

from evomerge.errors import SECTION, EvomergeError
from evomerge.recipe.loading import Recipe
from evomerge.run.observers.study import Study
from evomerge.run.observers.tracker import RunInfo
from evomerge.run.store import RunStore
from evomerge.run.store.views import Observer
from evomerge.run_options import RunOptions

EXTRA = "pip install 'evomerge[track]'"
_LIBRARIES = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module it needs


def require_trackers(recipe: Recipe) -> None:
    """Each tracker's library is installed: checked before the run directory exists."""
    for name, module in _LIBRARIES.items():
        if getattr(recipe.spec.track, name) is not None and importlib.util.find_spec(module) is None:
            raise EvomergeError(f"{module} is not installed; install the trackers' extra: {EXTRA}", path=recipe.path,
                                key=f"{SECTION}.track.{name}")


def observers(recipe: Recipe, store: RunStore, options: RunOptions = RunOptions()) -> List[Observer]:
    """The run's study, then the recipe's trackers."""
    track = recipe.spec.track
    info = RunInfo.of(recipe, store)
    found: List[Observer] = [Study(store)]
    if track.mlflow is not None:
        from evomerge.run.observers.to_mlflow import MlflowTracker

        found.append(MlflowTracker(track.mlflow, info))
    if track.wandb is not None:
        from evomerge.run.observers.to_wandb import WandbTracker

        found.append(WandbTracker(track.wandb, info, quiet=options.quiet))
    return found
