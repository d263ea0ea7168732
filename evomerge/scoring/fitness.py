"""The one place that turns metrics (and custom fitness terms) into objectives and a fitness."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from evomerge.errors import SECTION, EvomergeError
from evomerge.random_state import preserved_random_state
from evomerge.recipe.schema import TaskSpec
from evomerge.scoring.tasks import TaskSuite

Metrics = Dict[str, Dict[str, float]]  # task name -> metric name -> value


class Objective:
    """Fitness = Σ weight × metric, each metric signed by lm-eval's `higher_is_better`,
    plus any scores of a custom fitness function (higher is better)."""

    def __init__(self, tasks: Sequence[TaskSpec], suite: Optional[TaskSuite],
                 custom: Optional[Callable] = None, *, source: Optional[Path] = None):
        self.terms = []
        for index, task in enumerate(tasks):
            produced = suite.higher_is_better(task.name)
            if task.metric not in produced:
                raise EvomergeError(
                    f"task {task.name!r} does not produce metric {task.metric!r}; it produces {', '.join(sorted(produced))}",
                    path=source, key=f"{SECTION}.tasks[{index}].metric")
            self.terms.append((task.name, suite.result_key(task.name, task.metric), task.weight,
                               1.0 if produced[task.metric] else -1.0))
        self.custom = custom

    def custom_scores(self, model, tokenizer) -> Dict[str, float]:
        if self.custom is None:
            return {}
        with preserved_random_state(model.device), torch.no_grad():
            result = self.custom(model, tokenizer)
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            return {"custom": float(result)}
        if isinstance(result, dict) and all(isinstance(v, (int, float)) for v in result.values()):
            return {f"custom.{k}": float(v) for k, v in result.items()}
        raise TypeError(f"the custom fitness returned {type(result).__name__}; expected a float or a dict of floats")

    def names(self, custom_names: Sequence[str] = ()) -> List[str]:
        return [f"{task}.{metric}" for task, metric, _, _ in self.terms] + list(custom_names)

    def fitness(self, metrics: Metrics, custom: Dict[str, float]) -> Tuple[List[float], float]:
        """The objectives and the fitness, their sum: from a full evaluation's metrics, or from the
        means of the documents a racing stage has scored so far (then an estimate)."""
        objectives = self.objectives(metrics, custom)
        return objectives, float(sum(objectives))

    def objectives(self, metrics: Metrics, custom: Dict[str, float]) -> List[float]:
        """Signed, weighted terms (all to maximize); NaN or inf is an error."""
        values = [weight * sign * metrics[task][metric] for task, metric, weight, sign in self.terms]
        values += list(custom.values())
        bad = [name for name, v in zip(self.names(list(custom)), values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"non-finite score for {', '.join(bad)}")
        return values
