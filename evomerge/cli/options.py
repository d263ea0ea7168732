"""What every command shares: one-line errors, and the run's options (RunOptions) as click options,
generated from the fields' types, bounds and descriptions, as mergekit's `add_merge_options` does for
its MergeOptions. A command receives them as one `options` object, built here once."""

from __future__ import annotations

import functools
import sys
import typing
from typing import Any, Callable, Dict, Optional

import click
from pydantic import ValidationError

from evomerge.errors import EvomergeError
from evomerge.run_options import RunOptions

ALIASES = {"workers": ("--num-gpus",)}  # mergekit-evolve's name


def friendly_errors(command):
    """Bad input ends in one line and exit code 2; `--debug` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except EvomergeError as error:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo("error: " + " ".join(str(error).splitlines()), err=True)  # one line, whatever the message
            sys.exit(2)

    return wrapper


def run_options(*names: str, help: Optional[Dict[str, str]] = None) -> Callable[[Callable], Callable]:
    """Click options for these RunOptions fields; the command gets `options: RunOptions` instead, whose
    `model_fields_set` says which were given (a resumed run keeps its own for the others)."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            given = {name: value for name in names if (value := kwargs.pop(name)) is not None}
            try:
                kwargs["options"] = RunOptions(**given)
            except ValidationError as error:  # click's types already hold the fields' bounds
                raise click.UsageError(str(error)) from None
            return command(*args, **kwargs)

        for name in reversed(names):
            wrapper = _click_option(name, (help or {}).get(name))(wrapper)
        return wrapper

    return decorate


def _click_option(name: str, help: Optional[str]) -> Callable:
    field = RunOptions.model_fields[name]
    flags = ("--" + name.replace("_", "-"), *ALIASES.get(name, ()))
    text = help or field.description
    kind = next(t for t in typing.get_args(field.annotation) or (field.annotation,) if t is not type(None))
    if kind is bool:
        return click.option(*flags, name, is_flag=True, default=None, help=text)
    return click.option(*flags, name, type=_bounded(kind, field.metadata), default=None, help=text)


def _bounded(kind: type, constraints: list) -> Any:
    """click's range type for a field's pydantic bounds (ge, gt), so a bad value is refused as click refuses."""
    bounds: Dict[str, Any] = {}
    for constraint in constraints:
        if getattr(constraint, "ge", None) is not None:
            bounds = {"min": constraint.ge}
        elif getattr(constraint, "gt", None) is not None:
            bounds = {"min": constraint.gt, "min_open": True}
    if bounds and kind is int:
        return click.IntRange(**bounds)
    if bounds and kind is float:
        return click.FloatRange(**bounds)
    return kind
