"""Files a run writes beside its database: whole or not at all (a reader, or a kill, never sees half of
one), and a full disk said in one line that names the run directory and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator, Union

from evomerge.errors import EvomergeError


def write_atomically(path: Path, content: Union[str, bytes]) -> None:
    """`path` replaced by `content` in one step: written to a temporary file beside it, then renamed."""
    path = Path(path)
    with full_disk_said(path.parent):
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise


def is_full_disk(error: BaseException) -> bool:
    return (isinstance(error, sqlite3.OperationalError) and "full" in str(error)) or (
        isinstance(error, OSError) and error.errno == errno.ENOSPC)


@contextlib.contextmanager
def full_disk_said(directory: Path) -> Iterator[None]:
    """SQLite's "database or disk is full" or ENOSPC as one line; everything committed before stays."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as error:
        if not is_full_disk(error):
            raise
        raise disk_full(directory, error) from None


def disk_full(directory: Path, error: BaseException) -> EvomergeError:
    return EvomergeError(f"the disk is full ({error}); everything stored so far is kept: free some space, or move the "
                         f"run directory to a disk with space, and continue with `evomerge resume {directory}`",
                         path=directory)
