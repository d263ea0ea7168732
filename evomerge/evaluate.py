"""Scores a resident model with lm-evaluation-harness: tasks built once, one HFLM reused.

lm-eval's `simple_evaluate` rebuilds every task and reseeds the global random
generators on each call; here the tasks are loaded once per run and
`lm_eval.evaluator.evaluate` is called directly, with bootstrapping off and no
request cache (the weights under the HFLM change between calls).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import logging
import math
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

from evomerge import log_levels
from evomerge.errors import EvomergeError, did_you_mean
from evomerge.random_state import preserved_random_state
from evomerge.recipe import SECTION, EvalSpec, TaskSpec

Metrics = Dict[str, Dict[str, float]]  # task name -> metric name -> value

def _reuse_requests(task) -> None:
    """Build a task's requests once per run; later evaluations reset their responses and reuse them.

    `lm_eval.evaluator.evaluate` rebuilds every request on every call, which for small
    models costs as much as scoring them. The requests depend only on the documents and
    the prompt settings, never on the weights, so they are built once here: once per task,
    or once per document subset (`samples=`) when candidates are raced in stages. The
    builds are kept on `task.build_all_requests.builds`, which a test reads.
    """
    build = task.build_all_requests
    built = {}

    def build_once(**kwargs):
        key = repr(sorted(kwargs.items()))
        if key not in built:
            with _silenced(True):  # its progress bar, once per task
                build(**kwargs)
            built[key] = task._instances
            return
        for instance in built[key]:
            instance.resps.clear()
            instance.filtered_resps.clear()
        task._instances = built[key]

    build_once.builds = built
    task.build_all_requests = build_once


@contextlib.contextmanager
def _silenced(enabled: bool) -> Iterator[None]:
    """lm-eval prints a line and a progress bar for every bootstrapped standard error."""
    if not enabled:
        yield
        return
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        yield


class TaskSuite:
    """lm-eval tasks loaded once from the recipe's include paths (and lm-eval's own if needed),
    with the recipe's `num_fewshot` and `gen_kwargs` applied as `simple_evaluate` applies them."""

    def __init__(self, names: Sequence[str], include_paths: Sequence[Path], *, source: Optional[Path] = None,
                 key: str = f"{SECTION}.tasks", options: EvalSpec = EvalSpec(), seed: int = 0):
        self.names = list(dict.fromkeys(names))
        paths = [str(p) for p in include_paths]
        with log_levels.at_least("lm_eval", logging.ERROR):
            self._load(names, paths, source, key)
            for task in self.tasks.values():
                _configure(task, options, seed)
        for task in self.tasks.values():
            _reuse_requests(task)

    def _load(self, names: Sequence[str], paths: List[str], source: Optional[Path], key: str) -> None:
        from lm_eval.tasks import TaskManager

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
                    path=source,
                    key=key,
                )
        with preserved_random_state():
            loaded = manager.load(self.names)
        self.tasks = loaded["tasks"]
        if set(self.tasks) != set(self.names) or loaded["groups"]:
            raise EvomergeError(
                "task groups and tags are not supported here; name each task "
                f"({', '.join(sorted(self.tasks))})",
                path=source,
                key=key,
            )

    def higher_is_better(self, task: str) -> Dict[str, bool]:
        return dict(self.tasks[task].higher_is_better())

    def documents(self, task: str, limit: Optional[int] = None) -> int:
        """How many documents a full evaluation scores (lm-eval's `limit` counts per task)."""
        total = len(self.tasks[task].eval_docs)
        return min(total, limit) if limit else total

    def averaged(self, task: str, metric: str) -> bool:
        """Whether the metric is a mean over documents, so a subset's mean estimates it."""
        from lm_eval.api.metrics import mean

        return self.tasks[task].aggregation().get(metric) is mean

    def filters(self, task: str) -> List[str]:
        """The task's filter pipelines by name ('none' when it has none), as lm-eval keys its results."""
        return [pipeline.name for pipeline in self.tasks[task]._filters]

    def result_key(self, task: str, metric: str) -> str:
        """Where `metric` is in the task's results: 'acc', or 'exact_match,strict' after a filter
        (the first filter, as in lm-eval's own tables)."""
        first = self.filters(task)[0]
        return metric if first == "none" else f"{metric},{first}"


def _configure(task, options: EvalSpec, seed: int) -> None:
    """lm-eval's `simple_evaluate` overrides, once per run: generation settings, shots, the shot seed."""
    if options.gen_kwargs and task.get_config("output_type") == "generate_until":
        task.set_config(key="generation_kwargs", value=dict(options.gen_kwargs), update=True)
    if options.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=options.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)


@functools.lru_cache(maxsize=None)
def _quiet_hflm():
    """HFLM without its per-call progress bars: the search shows one bar of its own."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


class LMEvalScorer:
    """One HFLM around a model whose weights are rewritten in place between calls."""

    def __init__(
        self,
        suite: TaskSuite,
        model: torch.nn.Module,
        tokenizer,
        *,
        options: EvalSpec = EvalSpec(),
        limit: Optional[int] = None,
        bootstrap_iters: int = 0,
    ):
        self.suite = suite
        self.options = options
        self.limit = limit
        self.bootstrap_iters = bootstrap_iters
        model.eval()
        with log_levels.at_least("lm_eval", logging.ERROR):
            self.lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size,
                                    max_length=options.max_length)

    @property
    def documents(self) -> int:
        """Documents one `score()` scores, all tasks together."""
        return sum(self.suite.documents(task, self.limit) for task in self.suite.names)

    def score(self) -> Metrics:
        results = self._evaluate(limit=self.limit, samples=None, log_samples=False)
        return {task: _metrics(results["results"][task]) for task in self.suite.names}

    def score_documents(self, samples: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, List[float]]]:
        """Each document's metric values (task -> result key -> values in `samples` order), through
        lm-eval's own `samples=`; a task given no documents is not scored.

        lm-eval is asked for the documents sorted: it scores them in the dataset's order but labels
        them in the order given (lm-evaluation-harness#4084)."""
        asked = {task: [int(i) for i in ids] for task, ids in samples.items() if len(ids)}
        if not asked:
            return {}
        results = self._evaluate(limit=None, samples={task: sorted(ids) for task, ids in asked.items()},
                                 log_samples=True, tasks={task: self.suite.tasks[task] for task in asked})
        values: Dict[str, Dict[str, List[float]]] = {}
        for task, logged in results["samples"].items():
            position = {doc: i for i, doc in enumerate(asked[task])}
            for sample in sorted(logged, key=lambda s: position[s["doc_id"]]):
                for metric in sample["metrics"]:
                    key = metric if sample["filter"] == "none" else f"{metric},{sample['filter']}"
                    values.setdefault(task, {}).setdefault(key, []).append(float(sample[metric]))
        return values

    def _evaluate(self, *, limit, samples, log_samples: bool, tasks=None) -> dict:
        from lm_eval.evaluator import evaluate

        with preserved_random_state(), torch.no_grad(), _silenced(self.bootstrap_iters > 0), \
                log_levels.at_least("lm_eval", logging.WARNING):
            return evaluate(
                self.lm,
                {"tasks": tasks or self.suite.tasks, "groups": {}},
                limit=limit,
                samples=samples,
                bootstrap_iters=self.bootstrap_iters,
                cache_requests=False,
                log_samples=log_samples,
                system_instruction=self.options.system_instruction,
                apply_chat_template=self.options.apply_chat_template,
                fewshot_as_multiturn=self.options.fewshot_as_multiturn,
            )


def load_from_disk(path: str, trust_remote_code: bool = False):
    """A model folder and its tokenizer, for scoring a model that is not the resident one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def _metrics(raw: Dict[str, object]) -> Dict[str, float]:
    """lm-eval reports 'acc,none'; keep 'acc' (and 'metric,filter' for other filters).

    Standard errors come as 'acc_stderr' when lm-eval computed them.
    """
    metrics = {}
    for key, value in raw.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filter_name = key.split(",", 1)
        metrics[metric if filter_name == "none" else key] = float(value)
    return metrics


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
        with preserved_random_state(), torch.no_grad():
            result = self.custom(model, tokenizer)
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            return {"custom": float(result)}
        if isinstance(result, dict) and all(isinstance(v, (int, float)) for v in result.values()):
            return {f"custom.{k}": float(v) for k, v in result.items()}
        raise TypeError(f"the custom fitness returned {type(result).__name__}; expected a float or a dict of floats")

    def names(self, custom_names: Sequence[str] = ()) -> List[str]:
        return [f"{task}.{metric}" for task, metric, _, _ in self.terms] + list(custom_names)

    def objectives(self, metrics: Metrics, custom: Dict[str, float]) -> List[float]:
        """Signed, weighted terms (all to maximize); NaN or inf is an error."""
        values = [weight * sign * metrics[task][metric] for task, metric, weight, sign in self.terms]
        values += list(custom.values())
        bad = [name for name, v in zip(self.names(list(custom)), values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"non-finite score for {', '.join(bad)}")
        return values


def load_custom_fitness(spec: str, directory: Path, source: Optional[Path] = None) -> Callable:
    """Import `module:function`: a module file beside the recipe first, else an installed module.

    Only ever called when the recipe names a fitness function.
    """
    module_name, function_name = spec.split(":")
    key = f"{SECTION}.fitness"
    beside = directory / (module_name.replace(".", "/") + ".py")
    try:
        if beside.is_file():
            loader_spec = importlib.util.spec_from_file_location(f"evomerge_fitness_{abs(hash(beside))}", beside)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise EvomergeError(f"cannot import {module_name!r}: {error}", path=source, key=key) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EvomergeError(f"{module_name!r} has no function {function_name!r}", path=source, key=key)
    return function
