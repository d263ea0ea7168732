"""Who wins: the luckiest of dozens of near-ties on the search documents is usually no better held
out, so the crown goes by rules that account for noise and selection.

1. Finalists by an estimate, not by the single best score: `surrogate` fits a Gaussian process with
   a noise term (scikit-learn) over every fully scored candidate and ranks them by its posterior
   mean, which shrinks a lucky score toward its neighbours'; `score` ranks by search fitness.
2. Do no harm: the finalists and the start are scored on documents that selected none of them, and
   the best finalist there replaces the start only if it beats the start, paired on those documents,
   by more than `z` standard errors, `z` raised for the finalists compared (Bonferroni). Otherwise
   the start is the winner."""

from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from evomerge.run.store import Confirmation, Evaluation
from evomerge.scoring.paired import Terms, paired_difference


def estimates(evaluations: Sequence[Evaluation], rank: str, seed: int = 0) -> Dict[int, float]:
    """Each fully scored candidate's estimated fitness: its score, or the surrogate's posterior mean
    at its genotype (its score, when there are too few candidates or genes to fit one)."""
    ok = [e for e in evaluations if e.ok]
    scores = {e.id: float(e.fitness) for e in ok}
    if rank == "score" or len(ok) < 4 or not ok[0].genotype:
        return scores
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    x = np.asarray([e.genotype for e in ok], dtype=float)
    y = np.asarray([e.fitness for e in ok], dtype=float)
    if np.ptp(y) == 0:
        return scores
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.full(x.shape[1], 0.3), (1e-2, 1e2))
              + WhiteKernel(0.1, (1e-6, 1e1)))
    process = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed)
    with warnings.catch_warnings():  # a bound reached is an answer here (no structure, or no noise)
        warnings.simplefilter("ignore", ConvergenceWarning)
        process.fit(x, y)
    return {e.id: float(mean) for e, mean in zip(ok, process.predict(x))}


def finalists(evaluations: Sequence[Evaluation], estimated: Dict[int, float], top: int,
              start: Optional[int]) -> List[Evaluation]:
    """The `top` candidates with the best estimates (ties: the earlier), the start apart."""
    ok = [e for e in evaluations if e.ok and e.id != start]
    return sorted(ok, key=lambda e: (-estimated[e.id], e.id))[:top]


def family_z(z: float, compared: int) -> float:
    """The one-sided threshold that keeps `z`'s error rate over `compared` tests (Bonferroni)."""
    normal = NormalDist()
    return normal.inv_cdf(1 - (1 - normal.cdf(z)) / max(compared, 1))


def decide(start: Optional[int], finalist_ids: Sequence[int], confirmations: Dict[int, Confirmation], terms: Terms,
           z: float) -> Dict[str, Any]:
    """The crown: the best confirmed finalist if it beats the start beyond the noise, else the start;
    with every finalist's paired difference from the start on the confirmation documents."""
    threshold = family_z(z, len(finalist_ids))
    best = max(finalist_ids, key=lambda i: (confirmations[i].fitness, -i))
    crown: Dict[str, Any] = {"start": start, "finalists": list(finalist_ids), "z": z, "threshold": threshold,
                             "differences": {}}
    if start is None:  # a searcher that never proposed the start: nothing to compare with
        return {**crown, "winner": best, "beat_start": None}
    for i in finalist_ids:
        paired = paired_difference(terms, confirmations[start].documents, confirmations[i].documents)
        crown["differences"][str(i)] = {"value": paired.value, "stderr": paired.stderr}
    beat = paired_difference(terms, confirmations[start].documents, confirmations[best].documents).beyond(threshold)
    return {**crown, "winner": best if beat else start, "beat_start": beat}
