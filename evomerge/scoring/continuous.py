"""Continuous metrics of the gold answer, derived from the loglikelihoods lm-eval already computed.

Accuracy on a few dozen documents moves in steps of 1/n, and its noise is as large as the
differences between good candidates, so a search on it crowns noise. How likely the model
finds the gold answer moves with every weight, and lm-eval has computed it to decide `acc`:
each logged document holds its requests' loglikelihoods. No second forward pass.

- `p_gold`: the probability of the gold answer. A loglikelihood task: exp of the gold
  continuation's loglikelihood, the probability of the whole answer. A multiple_choice task:
  the gold choice's share of the softmax over the choices' loglikelihoods (several golds: their sum).
- `gold_loglik`: the gold continuation's loglikelihood per token, tokens as lm-eval tokenized it
  (several golds: the best).

Both are means over documents, higher is better. generate_until tasks give neither: their
requests hold no likelihood of the gold answer.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Tuple

import numpy as np

METRICS = ("p_gold", "gold_loglik")
CEILINGS = {"p_gold": 1.0, "gold_loglik": 0.0}  # the best a document can score: certainty of the gold answer
_OUTPUT_TYPES = ("loglikelihood", "multiple_choice")


def metrics(task) -> Tuple[str, ...]:
    """The continuous metrics an lm-eval task gives."""
    return METRICS if task.OUTPUT_TYPE in _OUTPUT_TYPES else ()


def wanted(names: Iterable[str]) -> bool:
    """Whether any of these metric names is a continuous one (they need lm-eval's logged samples)."""
    return any(name in METRICS for name in names)


def document_values(task, sample: dict, tokens: Mapping[Tuple[str, str], int]) -> Dict[str, float]:
    """One logged document's continuous metrics (`evaluate(log_samples=True)`'s sample), given how
    many tokens lm-eval scored for each (context, continuation) request."""
    if not metrics(task):
        return {}
    loglik = np.array([float(response[0]) for response in sample["filtered_resps"]])
    if task.OUTPUT_TYPE == "multiple_choice":
        golds = _gold_choices(task, sample)
        loglik = loglik[:len(task.doc_to_choice(sample["doc"]))]  # acc_mutual_info appends unconditional ones
        log_p = loglik - np.logaddexp.reduce(loglik)
    else:  # one request, the gold continuation
        golds, log_p = [0], loglik
    per_token = [loglik[g] / tokens[tuple(sample["arguments"][g])] for g in golds]
    return {"p_gold": float(np.exp(log_p[golds]).sum()), "gold_loglik": float(max(per_token))}


def _gold_choices(task, sample: dict) -> list:
    """The gold choices' indices, as lm-eval's `process_results` finds them."""
    doc = sample["doc"]
    gold = task.doc_to_text(doc) if task.multiple_input else sample["target"]
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    return list(gold) if isinstance(gold, list) else [gold]
