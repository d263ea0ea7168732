"""Searchers by name, as mergekit keeps its merge methods: a searcher is one class under
`@register("name")`, and the recipe's `searcher.name` finds it here. The built-in ones register
when the package is imported; a third-party searcher registers when its module is.

A recipe's `searcher:` is validated here, by name (the registry is the discriminator, so a searcher
registered after the recipe's types were built is known), and its JSON Schema is the union of the
registered searchers' options, discriminated on `name`, built from the registry when it is asked for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Literal, Mapping, Optional, Sequence, Type, TypeVar, Union

import numpy as np
from pydantic import Field, GetJsonSchemaHandler, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

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


def searcher_options(spec: SearcherSpec, objectives: int = 1, source: Optional[Path] = None,
                     scores: Optional[Mapping[str, str]] = None) -> SearcherOptions:
    """The searcher's own options, validated before anything loads, read against the names of the per-task
    `scores` its evaluations will report (SearcherOptions.reading); without them, names are taken as keys."""
    key = f"{SECTION}.searcher"
    cls = SEARCHERS.get(spec.name)
    if cls is None:
        raise EvomergeError(f"unknown searcher {spec.name!r}{did_you_mean(spec.name, SEARCHERS)}; "
                            f"expected one of {', '.join(sorted(SEARCHERS))}", path=source, key=f"{key}.name")
    if objectives > 1 and not cls.multi_objective:
        raise EvomergeError(f"{spec.name} optimizes one objective; use `objectives: sum` or a multi-objective "
                            "searcher (optuna with sampler nsga2)", path=source, key=f"{SECTION}.objectives")
    options = validated(cls.Options, spec.options(), source, key)
    if scores is None:
        return options
    try:
        return options.reading(scores)
    except EvomergeError as error:
        raise EvomergeError(error.message, path=source, key=f"{key}.{error.key}") from None


def options_union() -> Any:
    """The registered searchers' options as one type, discriminated on `name`: each searcher's options class
    with its name as a literal (optional for the default searcher, as in SearcherSpec), described by the
    first paragraph of the searcher's docstring (or its module's) for an editor to show."""
    default = SearcherSpec.model_fields["name"].default
    variants = tuple(
        create_model(f"{cls.__name__}Options", __base__=cls.Options, __doc__=_summary(cls),
                     name=(Literal[name], Field(name if name == default else ...,  # type: ignore[valid-type]
                                                description="The searcher, by its registered name.")))
        for name, cls in sorted(SEARCHERS.items()))
    return Annotated[Union[variants], Field(discriminator="name")]


def _summary(cls: Type[Searcher]) -> str:
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


class _AsRegistered:
    """Gives a SearcherSpec the JSON Schema of `options_union()` as the registry stands when a schema is made."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(TypeAdapter(options_union()).core_schema)


RegisteredSearcher = Annotated[SearcherSpec, _AsRegistered()]  # a recipe's `searcher:`


def make_searcher(spec: SearcherSpec, dimension: int, x0: np.ndarray, seed: int, objectives: int = 1,
                  source: Optional[Path] = None, options: Optional[SearcherOptions] = None,
                  genes: Sequence[GeneInfo] = ()) -> Searcher:
    """A fresh searcher; `options` already validated by `searcher_options` skip the check."""
    options = options or searcher_options(spec, objectives, source)
    try:
        return SEARCHERS[spec.name](dimension, x0, seed, options, objectives, genes)
    except ValueError as error:
        raise EvomergeError(str(error), path=source, key=f"{SECTION}.searcher") from None
