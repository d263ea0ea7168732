"""Interchangeable searchers behind one ask/tell protocol; chosen by name in the recipe.

A searcher sees plain vectors in the unit cube and fitness tuples, nothing else: no lm-eval,
no mergekit, no recipe (import-linter holds it to that). One module per searcher; genetic
operators are small classes that receive their random generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Type

import numpy as np

from evomerge.errors import SECTION, EvomergeError, did_you_mean, validated
from evomerge.searchers.base import (
    Fitness,
    GeneInfo,
    Proposal,
    Searcher,
    SearcherOptions,
)
from evomerge.searchers.cma import CMAES
from evomerge.searchers.ga import GeneticAlgorithm
from evomerge.searchers.llm import LLMSearch
from evomerge.searchers.optuna import OptunaSearch, RandomSearch
from evomerge.searchers.spec import SearcherSpec

SEARCHERS: Dict[str, Type[Searcher]] = {cls.name: cls for cls in (CMAES, GeneticAlgorithm, LLMSearch, OptunaSearch,
                                                                   RandomSearch)}

__all__ = ["SEARCHERS", "Fitness", "GeneInfo", "Proposal", "Searcher", "SearcherOptions", "SearcherSpec", "make_searcher",
           "searcher_options"]


def searcher_options(spec: SearcherSpec, objectives: int = 1, source: Optional[Path] = None) -> SearcherOptions:
    """The searcher's own options, validated before anything loads."""
    key = f"{SECTION}.searcher"
    cls = SEARCHERS.get(spec.name)
    if cls is None:
        raise EvomergeError(f"unknown searcher {spec.name!r}{did_you_mean(spec.name, SEARCHERS)}; "
                            f"expected one of {', '.join(sorted(SEARCHERS))}", path=source, key=f"{key}.name")
    if objectives > 1 and not cls.multi_objective:
        raise EvomergeError(f"{spec.name} optimizes one objective; use `objectives: sum` or a multi-objective "
                            "searcher (optuna with sampler nsga2)", path=source, key=f"{SECTION}.objectives")
    return validated(cls.Options, spec.options(), source, key)


def make_searcher(spec: SearcherSpec, dimension: int, x0: np.ndarray, seed: int, objectives: int = 1,
                  source: Optional[Path] = None, options: Optional[SearcherOptions] = None,
                  genes: Sequence[GeneInfo] = ()) -> Searcher:
    """A fresh searcher; `options` already validated by `searcher_options` skip the check."""
    options = options or searcher_options(spec, objectives, source)
    try:
        return SEARCHERS[spec.name](dimension, x0, seed, options, objectives, genes)
    except ValueError as error:
        raise EvomergeError(str(error), path=source, key=f"{SECTION}.searcher") from None
