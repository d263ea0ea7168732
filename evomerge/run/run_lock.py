"""One process writes a run directory at a time: `search --out`, `resume` and `study` hold RUN/run.lock,
an OS lock (flock) that the OS lets go of when the process ends, however it ends, so a kill -9 leaves
no stale lock. The file says who holds it (pid, host, start time, command), so a second process is
refused in one line naming the holder. Readers (`report`, `export`) never take it.

A process that holds a run may open it again (a notebook that resumes what it searched): the lock
is the process's, kept while any of its holders lives."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Dict

import portalocker

from evomerge.errors import EvomergeError

LOCK_FILE = "run.lock"

_held: "weakref.WeakValueDictionary[Path, RunLock]" = weakref.WeakValueDictionary()


class RunLock:
    """Held from `hold` until each holder has released it or this object is gone (its file closes), or
    the process ends."""

    def __init__(self, directory: Path, handle: Any):
        self.directory = directory
        self._handle = handle
        self._holders = 1

    @classmethod
    def hold(cls, directory: Path) -> "RunLock":
        """The run directory's lock, taken now (the folder is made if need be), or one line naming its holder."""
        directory = Path(directory).resolve()
        held = _held.get(directory)
        if held is not None:
            held._holders += 1
            return held
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK_FILE, "a+", encoding="utf-8")  # "a+": a refused open must not erase the holder
        try:
            portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.LockException:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise EvomergeError(f"{_holder(holder)} holds this run; wait for it to end or stop it (a process that "
                                "dies lets go of the run), or write to another --out", path=directory) from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}) + "\n")
        handle.flush()
        lock = cls(directory, handle)
        _held[directory] = lock
        return lock

    def release(self) -> None:
        """This holder lets go; the lock goes when no holder in this process is left."""
        self._holders -= 1
        if self._holders == 0:
            _held.pop(self.directory, None)
            self._handle.close()

    def __del__(self) -> None:
        self._handle.close()  # the OS lock goes with its file

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    @classmethod
    def refuse_held(cls, directory: Path) -> None:
        """One line naming the holder if another process holds `directory`; nothing is kept or made."""
        if (Path(directory) / LOCK_FILE).is_file():
            cls.hold(directory).release()


def _holder(text: str) -> str:
    try:
        found: Dict[str, Any] = json.loads(text)
    except ValueError:
        return "another process (it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found["started"]))
    return f"process {found['pid']} on {found['host']} (`{found['command']}`, started {started})"
