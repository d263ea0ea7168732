"""The one error type users see: it names the file, the key and what was expected."""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union


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
