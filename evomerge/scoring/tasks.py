"""lm-eval tasks loaded once per run, configured as `simple_evaluate` would, their requests built once.

lm-eval's `simple_evaluate` rebuilds every task and reseeds the global random generators on
each call; here the tasks are loaded once per run and their requests reused between candidates
(the weights change, the prompts do not).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from evomerge import log_levels
from evomerge.errors import SECTION, EvomergeError, did_you_mean
from evomerge.random_state import preserved_random_state
from evomerge.recipe.schema import EvalSpec, EvomergeSpec
from evomerge.scoring import continuous

HFLM_MAX_GEN_TOKS = 256  # what HFLM generates at most when a task's generation_kwargs do not say


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
            with silenced(True):  # its progress bar, once per task
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
def silenced(enabled: bool) -> Iterator[None]:
    """lm-eval prints a line and a progress bar for every bootstrapped standard error."""
    if not enabled:
        yield
        return
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        yield


def recipe_keys(spec: EvomergeSpec) -> Dict[str, str]:
    """Where the recipe names each task that is not a search task, for a suite that loads them together."""
    confirm = spec.confirm.tasks if spec.confirm else []
    return {**{name: f"{SECTION}.confirm.tasks" for name in confirm},
            **{name: f"{SECTION}.report_tasks" for name in spec.report_tasks}}


@dataclass(frozen=True)
class Split:
    """Each task's document ids: those a search scores, and those held back to confirm its finalists."""

    search: Dict[str, List[int]]
    held_back: Dict[str, List[int]]
    share: float


class TaskSuite:
    """lm-eval tasks loaded once from the recipe's include paths (and lm-eval's own if needed),
    with the recipe's `num_fewshot` and `gen_kwargs` applied as `simple_evaluate` applies them.
    An unknown name is refused at `keys[name]` (default `key`), with a did-you-mean."""

    def __init__(self, names: Sequence[str], include_paths: Sequence[Path], *, source: Optional[Path] = None,
                 key: str = f"{SECTION}.tasks", keys: Mapping[str, str] = {}, options: EvalSpec = EvalSpec(),
                 seed: int = 0):
        self.names = list(dict.fromkeys(names))
        paths = [str(p) for p in include_paths]
        with log_levels.at_least("lm_eval", logging.ERROR):
            self._load(names, paths, source, lambda name: keys.get(name, key))
            for task in self.tasks.values():
                _configure(task, options, seed)
        for task in self.tasks.values():
            _reuse_requests(task)

    def _load(self, names: Sequence[str], paths: List[str], source: Optional[Path], key: Callable[[str], str]) -> None:
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
                    key=key(name),
                )
        with preserved_random_state():
            loaded = manager.load(self.names)
        self.tasks = loaded["tasks"]
        if set(self.tasks) != set(self.names) or loaded["groups"]:
            raise EvomergeError(
                "task groups and tags are not supported here; name each task "
                f"({', '.join(sorted(self.tasks))})",
                path=source,
                key=key(next((n for n in self.names if n not in self.tasks), self.names[0])),  # the group's
            )

    def higher_is_better(self, task: str) -> Dict[str, bool]:
        """The metrics a task produces: lm-eval's own and the continuous ones derived from them."""
        return {**self.tasks[task].higher_is_better(), **{m: True for m in continuous.metrics(self.tasks[task])}}

    def main_metric(self, task: str) -> str:
        """What a table shows for the task: `acc` when it produces it, else its first metric."""
        produced = self.higher_is_better(task)
        return "acc" if "acc" in produced else next(iter(produced))

    def documents(self, task: str, limit: Optional[int] = None) -> int:
        """How many documents a full evaluation scores (lm-eval's `limit` counts per task)."""
        total = len(self.tasks[task].eval_docs)
        return min(total, limit) if limit else total

    def split(self, share: float, seed: int, limit: Optional[int] = None) -> "Split":
        """A seeded `share` of each task's documents held back (at least one, at most all but one), and
        the rest, in the dataset's order, of which a search scores the first `limit`."""
        rng = np.random.default_rng(seed)
        search, held = {}, {}
        for task in self.names:
            total = len(self.tasks[task].eval_docs)
            count = min(max(round(share * total), 1), total - 1)
            kept = np.ones(total, dtype=bool)
            kept[rng.choice(total, size=count, replace=False)] = False
            search[task] = [int(i) for i in np.flatnonzero(kept)][:limit or None]
            held[task] = [int(i) for i in np.flatnonzero(~kept)]
        return Split(search, held, share)

    def averaged(self, task: str, metric: str) -> bool:
        """Whether the metric is a mean over documents, so a subset's mean estimates it."""
        from lm_eval.api.metrics import mean

        return metric in continuous.metrics(self.tasks[task]) or self.tasks[task].aggregation().get(metric) is mean

    def filters(self, task: str) -> List[str]:
        """The task's filter pipelines by name ('none' when it has none), as lm-eval keys its results."""
        return [pipeline.name for pipeline in self.tasks[task]._filters]

    def longest_request(self, task: str, encode: Callable[[str], List[int]], limit: Optional[int],
                        max_length: int) -> int:
        """The most tokens one of the task's requests puts in a sequence (HFLM truncates to `max_length`,
        generation adds up to `max_gen_toks`): a batch is padded to its longest request, so this bounds
        what scoring holds per sequence. Chat templates, when the recipe applies them, add a few more."""
        built = self.tasks[task]
        built.build_all_requests(limit=limit, rank=0, world_size=1)
        longest = 0
        for instance in built.instances:
            if instance.request_type == "generate_until":
                context, options = instance.args
                tokens = len(encode(context)) + int(options.get("max_gen_toks", HFLM_MAX_GEN_TOKS))
            else:  # loglikelihood (context, continuation) or loglikelihood_rolling (text,)
                tokens = len(encode("".join(instance.args[:2])))
            longest = max(longest, tokens)
        return min(longest, max_length)

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
    _shots_per_document(task, seed)


def _shots_per_document(task, seed: int) -> None:
    """A document's few-shot examples drawn from a generator seeded by (run seed, task, the document).

    lm-eval draws every document's examples from one generator per task, seeded once
    (`--fewshot_seed`), so a document's prompt depends on which documents were built before it:
    a racing stage, a full evaluation and the report would give it different examples. Here
    each document's draw starts afresh from its own seed, whatever is built around it.
    """
    build = task.fewshot_context
    name = task.get_config("task")

    def fewshot_context(doc, *args, **kwargs):
        key = f"{seed}\0{name}\0{json.dumps(doc, sort_keys=True, default=str)}"
        if getattr(task, "sampler", None) is not None:
            task.sampler.set_rnd(key)
        task.fewshot_rnd = random.Random(key)
        return build(doc, *args, **kwargs)

    task.fewshot_context = fewshot_context
