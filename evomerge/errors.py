"""The one error type users see: it names the file, the key and what was expected."""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

from pydantic import BaseModel, ValidationError

SECTION = "evomerge"  # the recipe's own section, which mergekit ignores; error keys in it start with it
TAG = "~"  # pydantic puts a tagged union's tag in an error's location; tags that start with it are left out of keys


class EvomergeError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""

    def __init__(
        self,
        message: str,
        *,
        path: Optional[Union[str, Path]] = None,
        key: Optional[str] = None,
    ):
        self.path = str(path) if path is not None else None
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.path, self.key) if part)
        return f"{where}: {self.message}" if where else self.message


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix for a misspelt name, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@contextlib.contextmanager
def mergekit_refusals(path: Union[str, Path]) -> Iterator[None]:
    """mergekit's planner, loaders and validators refuse a recipe with RuntimeError or ValueError."""
    try:
        yield
    except (RuntimeError, ValueError) as error:
        raise EvomergeError(f"mergekit cannot merge the recipe: {error}", path=path) from error


def validated(model: type, raw: Any, path: Optional[Path], prefix: Optional[str]):
    """A pydantic model from raw data, or one EvomergeError naming the file, the key and what was expected."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = _dotted(([prefix] if prefix else []) + list(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            fields = _fields_at(model, first["loc"][:-1])
            message = f"unknown key{did_you_mean(str(first['loc'][-1]), fields)}"
        elif first["type"] == "missing":
            message = "required key is missing"
        elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
            message = f"{message}, got {first['input']!r}"
        raise EvomergeError(message, path=path, key=key) from None
    except (RuntimeError, ValueError, TypeError) as error:  # mergekit's validators raise these
        raise EvomergeError(str(error), path=path, key=prefix) from None


def _dotted(loc: List[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith(TAG):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: type, loc: Tuple[Any, ...]) -> List[str]:
    """The field names of the nested model at `loc`, for a 'did you mean' (in a union, the first member
    that has the location's next field)."""
    models = [model]
    for part in loc:
        if isinstance(part, int) or part.startswith(TAG):
            continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        models = [a for a in _flatten_annotation(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)] if field else []
        if not models:
            return []
    return list(models[0].model_fields)


def _flatten_annotation(annotation: Any) -> List[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [leaf for arg in args for leaf in _flatten_annotation(arg)]
