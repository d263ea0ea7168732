"""Libraries evomerge calls per candidate (lm-eval, Optuna) log at INFO on every call, while
evomerge shows its own progress. Their loggers are raised only during evomerge's calls, so a
user's own use of them in the same process logs as the user set it."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def at_least(name: str, level: int) -> Iterator[None]:
    """The logger `name` at `level` or above while the block runs, then as it was."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        logger.setLevel(previous)
