"""Interchangeable searchers behind one ask/tell protocol; chosen by name in the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Type

import numpy as np
from pydantic import ValidationError

from evomerge.errors import EvomergeError, did_you_mean
from evomerge.recipe import SECTION, SearcherSpec
from evomerge.searchers.base import Fitness, Proposal, Searcher
from evomerge.searchers.cma import CMAES
from evomerge.searchers.ga import GeneticAlgorithm
from evomerge.searchers.optuna import OptunaSearch
from evomerge.searchers.random import RandomSearch

SEARCHERS: Dict[str, Type[Searcher]] = {cls.name: cls for cls in (CMAES, GeneticAlgorithm, OptunaSearch, RandomSearch)}

__all__ = ["SEARCHERS", "Fitness", "Proposal", "Searcher", "make_searcher"]


def make_searcher(spec: SearcherSpec, dimension: int, x0: np.ndarray, seed: int, objectives: int = 1,
                  source: Optional[Path] = None) -> Searcher:
    key = f"{SECTION}.searcher"
    cls = SEARCHERS.get(spec.name)
    if cls is None:
        raise EvomergeError(f"unknown searcher {spec.name!r}{did_you_mean(spec.name, SEARCHERS)}; "
                            f"expected one of {', '.join(sorted(SEARCHERS))}", path=source, key=f"{key}.name")
    try:
        options = cls.Options.model_validate(spec.options())
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = f"unknown option for {spec.name}{did_you_mean(field, cls.Options.model_fields)}" \
            if first["type"] == "extra_forbidden" else first["msg"]
        raise EvomergeError(message, path=source, key=f"{key}.{field}") from None
    if objectives > 1 and not cls.multi_objective:
        raise EvomergeError(f"{spec.name} optimizes one objective; use `objectives: sum` or a multi-objective "
                            "searcher (optuna with sampler nsga2)", path=source, key=f"{SECTION}.objectives")
    try:
        return cls(dimension, x0, seed, options, objectives)
    except ValueError as error:
        raise EvomergeError(str(error), path=source, key=key) from None
