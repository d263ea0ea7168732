"""Scores a resident model with lm-evaluation-harness: one HFLM reused across candidates.

`lm_eval.evaluator.evaluate` is called directly on the tasks built once (scoring/tasks.py),
with bootstrapping off and no request cache (the weights under the HFLM change between calls).
Each document's values come from lm-eval's logged samples, with the continuous metrics
derived from their loglikelihoods (continuous.py).

With a fixed batch size, running out of device memory halves the batch and retries the call
(down to 1), and the smaller batch is kept for later candidates: a long document or a larger
merged vocabulary should cost speed, not the candidate. `auto` leaves it to lm-eval's own search.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

from evomerge import log_levels
from evomerge.random_state import preserved_random_state
from evomerge.recipe.device_defaults import batch_size
from evomerge.recipe.schema import EvalSpec
from evomerge.scoring import continuous
from evomerge.scoring.fitness import Metrics
from evomerge.scoring.tasks import TaskSuite, silenced

Documents = Dict[str, Dict[str, List[float]]]  # task -> result key -> each document's value


@functools.lru_cache(maxsize=None)
def _hflm():
    """HFLM without its per-call progress bars (the search shows one bar of its own), which keeps how
    many tokens it scored for each (context, continuation): the per-token continuous metric needs them."""
    from lm_eval.models.huggingface import HFLM

    class CountingHFLM(HFLM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.continuation_tokens: Dict[Tuple[str, str], int] = {}

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            for pair, _, continuation in requests:
                if pair is not None:  # rolling windows have none
                    self.continuation_tokens[pair] = len(continuation)
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return CountingHFLM


class LMEvalScorer:
    """One HFLM around a model whose weights are rewritten in place between calls.

    `continuous`: `score()` also gives the continuous metrics (continuous.py). They need lm-eval's
    logged samples, which cost it a template rendering per document (on the tiny zoo, as much
    as the forward pass), so a search whose fitness does not use them goes without."""

    def __init__(
        self,
        suite: TaskSuite,
        model: torch.nn.Module,
        tokenizer,
        *,
        options: EvalSpec = EvalSpec(),
        limit: Optional[int] = None,
        samples: Optional[Dict[str, List[int]]] = None,
        bootstrap_iters: int = 0,
        continuous: bool = False,
    ):
        self.suite = suite
        self.continuous = continuous
        self.options = options
        self.limit = limit
        self.samples = samples  # each task's documents, when not its first `limit` (documents held back)
        self.bootstrap_iters = bootstrap_iters
        model.eval()
        with log_levels.at_least("lm_eval", logging.ERROR):
            self.lm = _hflm()(pretrained=model, tokenizer=tokenizer,
                              batch_size=batch_size(options, next(model.parameters()).device.type),
                              max_length=options.max_length)

    def pool(self, task: str) -> List[int]:
        """The ids of the task's documents that `score()` scores."""
        return list(self.samples[task]) if self.samples else list(range(self.suite.documents(task, self.limit)))

    @property
    def documents(self) -> int:
        """Documents one `score()` scores, all tasks together."""
        return sum(len(self.pool(task)) for task in self.suite.names)

    def _whole(self) -> dict:
        """`_evaluate`'s document selection for a whole evaluation."""
        return {"limit": None, "samples": self.samples} if self.samples else {"limit": self.limit, "samples": None}

    def score(self) -> Metrics:
        """Each task's metrics (task -> key -> mean over the documents, and lm-eval's `_stderr` when
        it bootstraps), the continuous ones too if the scorer was made `continuous`."""
        if self.continuous:
            return self.score_with_documents()[0]
        results = self._evaluate(**self._whole(), log_samples=False)
        return {task: task_metrics(results["results"][task]) for task in self.suite.names}

    def score_with_documents(self) -> Tuple[Metrics, Documents]:
        """`score()`'s metrics with the continuous ones (their means and `_stderr`), and each
        document's values in the dataset's order, from one lm-eval call."""
        results = self._evaluate(**self._whole(), log_samples=True)
        documents = self._documents(results, order=None)
        metrics = {}
        for task in self.suite.names:
            derived = {key: values for key, values in documents.get(task, {}).items()
                       if key.split(",")[0] in continuous.METRICS}
            metrics[task] = {**task_metrics(results["results"][task]), **averages(derived)}
        return metrics, documents

    def score_documents(self, samples: Dict[str, Sequence[int]]) -> Documents:
        """Each document's metric values (task -> result key -> values in `samples` order), the
        continuous ones included, through lm-eval's own `samples=`; a task given no documents is not scored.

        lm-eval is asked for the documents sorted: it scores them in the dataset's order but labels
        them in the order given (lm-evaluation-harness#4084)."""
        asked = {task: [int(i) for i in ids] for task, ids in samples.items() if len(ids)}
        if not asked:
            return {}
        results = self._evaluate(limit=None, samples={task: sorted(ids) for task, ids in asked.items()},
                                 log_samples=True, tasks={task: self.suite.tasks[task] for task in asked})
        return self._documents(results, order=asked)

    def _documents(self, results: dict, order: Optional[Dict[str, List[int]]]) -> Documents:
        """Each logged document's metric values with the continuous ones, in `order` (by default the
        documents' own)."""
        values: Documents = {}
        for task, logged in results["samples"].items():
            position = {doc: i for i, doc in enumerate(order[task])} if order else None
            for sample in sorted(logged, key=lambda s: position[s["doc_id"]] if position else s["doc_id"]):
                found = {metric: sample[metric] for metric in sample["metrics"]}
                found.update(continuous.document_values(self.suite.tasks[task], sample, self.lm.continuation_tokens))
                for metric, value in found.items():
                    key = metric if sample["filter"] == "none" else f"{metric},{sample['filter']}"
                    values.setdefault(task, {}).setdefault(key, []).append(float(value))
        return values

    def _evaluate(self, **kwargs) -> dict:
        """One lm-eval call, retried with half the batch after running out of memory. The retry runs
        outside the `except` block: the error's traceback holds the failed batch's tensors, and
        `empty_cache` can only return their memory once it is gone."""
        while True:
            try:
                return self._evaluate_once(**kwargs)
            except Exception as error:
                size = self.lm.batch_size
                if not out_of_memory(error) or size == "auto" or int(size) <= 1:
                    raise
            self.lm.batch_size_per_gpu = int(size) // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("out of memory at batch size %s; retrying with %s", size, self.lm.batch_size_per_gpu)

    def _evaluate_once(self, *, limit, samples, log_samples: bool, tasks=None) -> dict:
        from lm_eval.evaluator import evaluate

        with preserved_random_state(self.lm.device), torch.no_grad(), silenced(self.bootstrap_iters > 0), \
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


def out_of_memory(error: BaseException) -> bool:
    """torch's own out-of-memory error, or a RuntimeError that says it ran out: other backends, older
    torch, and the CPU allocator, which raises a plain RuntimeError ("can't allocate memory")."""
    message = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message))


def load_from_disk(path: str, trust_remote_code: bool = False):
    """A model folder and its tokenizer, for scoring a model that is not the resident one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))


def task_metrics(raw: Dict[str, object]) -> Dict[str, float]:
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


def averages(documents: Dict[str, List[float]]) -> Dict[str, float]:
    """Each key's mean over the documents and, from two documents on, its standard error as
    lm-eval's `mean_stderr` gives it ('acc_stderr', or 'acc_stderr,filter')."""
    metrics = {}
    for key, scores in documents.items():
        array = np.asarray(scores, dtype=float)
        metrics[key] = float(array.mean())
        if len(array) > 1:
            metric, _, filter_name = key.partition(",")
            stderr_key = f"{metric}_stderr" + (f",{filter_name}" if filter_name else "")
            metrics[stderr_key] = float(array.std(ddof=1) / math.sqrt(len(array)))
    return metrics
