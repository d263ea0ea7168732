"""Scores a resident model with lm-evaluation-harness: one HFLM reused across candidates.

`lm_eval.evaluator.evaluate` is called directly on the tasks built once (scoring/tasks.py),
with bootstrapping off and no request cache (the weights under the HFLM change between calls).
"""

from __future__ import annotations

import functools
import logging
from typing import Dict, List, Optional, Sequence

import torch

from evomerge import log_levels
from evomerge.random_state import preserved_random_state
from evomerge.recipe.model import EvalSpec
from evomerge.scoring.fitness import Metrics
from evomerge.scoring.tasks import TaskSuite, silenced


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

        with preserved_random_state(), torch.no_grad(), silenced(self.bootstrap_iters > 0), \
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
