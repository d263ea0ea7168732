"""Paired differences between two models scored on the same documents, and what a set of
documents can resolve. Two candidates succeed and fail on mostly the same documents, so their
difference varies less than either score: a paired test sees what two separate scores hide."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Documents = Dict[str, Dict[str, List[float]]]  # task -> result key -> each document's value
Terms = Sequence[Tuple[str, str, float, float]]  # (task, result key, weight, sign): an Objective's terms


@dataclass(frozen=True)
class Paired:
    value: float  # b minus a, as the terms weigh and sign them
    stderr: float  # from the per-document differences

    def beyond(self, z: float) -> bool:
        """Whether b beats a by more than `z` standard errors."""
        return self.value - z * self.stderr > 0


def paired_difference(terms: Terms, a: Documents, b: Documents) -> Paired:
    """Σ weight × sign × (b − a) over the terms, with its standard error: each term's mean
    per-document difference, the variance of each mean from its own documents."""
    value, variance = 0.0, 0.0
    for task, key, weight, sign in terms:
        difference = np.asarray(b[task][key], dtype=float) - np.asarray(a[task][key], dtype=float)
        value += weight * sign * float(difference.mean())
        if len(difference) > 1:
            variance += weight ** 2 * float(difference.var(ddof=1)) / len(difference)
    return Paired(value, math.sqrt(variance))


def spread(terms: Terms, scores: Optional[Documents] = None,
           metrics: Optional[Dict[str, Dict[str, float]]] = None) -> Dict[str, float]:
    """Each term's per-document variance, as one model's scores show it: from its per-document values
    when stored, else from its mean m (a score in [0, 1] varies by at most m(1 - m))."""
    found = {}
    for task, key, _, _ in terms:
        values = (scores or {}).get(task, {}).get(key)
        if values is not None and len(values) > 1:
            found[task] = float(np.var(values, ddof=1))
        elif metrics and key in metrics.get(task, {}) and 0 <= metrics[task][key] <= 1:
            found[task] = metrics[task][key] * (1 - metrics[task][key])
    return found


def resolution(terms: Terms, documents: Dict[str, int], variances: Optional[Dict[str, float]] = None,
               z: float = 2.0) -> float:
    """The smallest difference between two candidates that `documents` (per task) resolve at `z`
    standard errors. Without `variances` (per-document, by task: `spread`), from the binomial bound
    (a score in [0, 1] varies by at most 1/4 per document). Either way for two models that disagree
    independently: pairing only shrinks it."""
    variance = 0.0
    for task, _, weight, _ in terms:
        per_document = (variances or {}).get(task, 0.25)
        variance += weight ** 2 * 2 * per_document / max(documents[task], 1)
    return z * math.sqrt(variance)
