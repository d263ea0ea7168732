"""Searchers by name, as mergekit keeps its merge methods: a searcher is one class under
`@register("name")`, and the recipe's `searcher.name` finds it here. The built-in ones register
when the package is imported; a third-party searcher registers when its module is."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Type, TypeVar

import numpy as np

from evomerge.errors import SECTION, EvomergeError, did_you_mean, validated
from evomerge.searchers.base import GeneInfo, Searcher, SearcherOptions
from evomerge.searchers.spec import SearcherSpec

SEARCHERS: Dict[str, Type[Searcher]] = {}
S = TypeVar("S", bound=Type[Searcher])


def register(name: str) -> Callable[[S], S]:
    """A class decorator that makes a searcher available by `name`; a name is registered once."""

    def add(cls: S) -> S:
        if name in SEARCHERS:
            raise ValueError(f"a searcher named {name!r} is already registered ({SEARCHERS[name].__qualname__})")
        cls.name = name
        SEARCHERS[name] = cls
        return cls

    return add


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
