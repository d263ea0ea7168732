"""Scores a resident model with lm-evaluation-harness: tasks built once, one HFLM reused.

lm-eval's `simple_evaluate` rebuilds every task and reseeds the global random
generators on each call; here the tasks are loaded once per run and
`lm_eval.evaluator.evaluate` is called directly, with bootstrapping off and no
request cache (the weights under the HFLM change between calls).
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from evomerge.errors import EvomergeError, did_you_mean

Metrics = Dict[str, Dict[str, float]]  # task name -> metric name -> value

logging.getLogger("lm_eval").setLevel(logging.WARNING)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Whatever lm-eval or a merge method draws from the global generators stays inside."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TaskSuite:
    """lm-eval tasks loaded once from the recipe's include paths (and lm-eval's own if needed)."""

    def __init__(self, names: Sequence[str], include_paths: Sequence[Path], *, source: str = ""):
        from lm_eval.tasks import TaskManager

        self.names = list(dict.fromkeys(names))
        paths = [str(p) for p in include_paths]
        local = TaskManager(include_path=paths or None, include_defaults=False)
        manager = local
        if any(name not in local.all_tasks for name in self.names):
            manager = TaskManager(include_path=paths or None, include_defaults=True)
        for name in self.names:
            if name not in manager.all_tasks:
                listed = ", ".join(sorted(local.all_tasks)) if paths else ""
                raise EvomergeError(
                    f"unknown lm-eval task {name!r}{did_you_mean(name, manager.all_tasks)}"
                    + (f"; tasks in the include paths: {listed}" if listed else ""),
                    path=source or None,
                    key="evomerge.tasks",
                )
        with preserved_random_state():
            loaded = manager.load(self.names)
        self.tasks = loaded["tasks"]
        if set(self.tasks) != set(self.names) or loaded["groups"]:
            raise EvomergeError(
                "task groups and tags are not supported here; name each task "
                f"({', '.join(sorted(self.tasks))})",
                path=source or None,
                key="evomerge.tasks",
            )

    def higher_is_better(self, task: str) -> Dict[str, bool]:
        return dict(self.tasks[task].higher_is_better())


class LMEvalScorer:
    """One HFLM around a model whose weights are rewritten in place between calls."""

    def __init__(
        self,
        suite: TaskSuite,
        model: torch.nn.Module,
        tokenizer,
        *,
        batch_size: int = 64,
        limit: Optional[int] = None,
    ):
        from lm_eval.models.huggingface import HFLM

        self.suite = suite
        self.limit = limit
        model.eval()
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def score(self) -> Metrics:
        from lm_eval.evaluator import evaluate

        with preserved_random_state(), torch.no_grad():
            results = evaluate(
                self.lm,
                {"tasks": self.suite.tasks, "groups": {}},
                limit=self.limit,
                bootstrap_iters=0,
                cache_requests=False,
                log_samples=False,
            )
        return {task: _metrics(results["results"][task]) for task in self.suite.names}


def _metrics(raw: Dict[str, object]) -> Dict[str, float]:
    """lm-eval reports 'acc,none'; keep 'acc' (and 'metric,filter' for other filters)."""
    metrics = {}
    for key, value in raw.items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filter_name = key.split(",", 1)
        metrics[metric if filter_name == "none" else key] = float(value)
    return metrics
