"""Where candidates are evaluated: a pool of worker slots the search loop sends calls to and
takes results from, one call per slot at a time, results in the order they finish.

`LocalPool` is one worker in the search's own process (no Ray import); `RayPool`
(ray_pool.py) is one Ray actor per device. A worker answers a `Step`; a slot whose worker
died answers `WorkerLost`. Everything here is plain data, so it travels between processes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Protocol, Tuple


@dataclass(frozen=True)
class Outcome:
    """A finished candidate, as the store keeps it."""

    status: str  # ok | failed | raced
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    objectives: Optional[List[float]] = None
    fitness: Optional[float] = None
    error: Optional[str] = None
    materialize_seconds: Optional[float] = None
    evaluate_seconds: Optional[float] = None
    documents: int = 0
    document_scores: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)  # raced: per document, run order
    fingerprint: Dict[str, str] = field(default_factory=dict)  # of the weights scored (merge/fingerprint.py)
    device: Optional[str] = None  # where they were merged and scored


@dataclass(frozen=True)
class Step:
    """Where a candidate stands: a racing stage's estimate (custom terms included), or its outcome."""

    stage: int = 0
    estimate: Optional[float] = None
    upper: Optional[float] = None
    margin: float = 0.0  # how far above the bar `upper` must be for the candidate to go on
    bar: Optional[float] = None  # the fitness of the bar `upper` was computed against (None: there was none)
    outcome: Optional[Outcome] = None


@dataclass(frozen=True)
class WorkerLost:
    """The worker's process died (killed, out of memory) during the call; the slot needs `restart`."""

    reason: str


class Pool(Protocol):
    names: List[str]  # one per slot, as the store records who evaluated what

    def submit(self, slot: int, method: str, *args: Any) -> None: ...

    def wait(self) -> Tuple[int, Any]: ...

    def restart(self, slot: int) -> None: ...

    def close(self) -> None: ...


class LocalPool:
    """The worker in this process: a call runs when it is submitted."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.names = ["local"]
        self._done: Deque[Tuple[int, Any]] = deque()

    def submit(self, slot: int, method: str, *args: Any) -> None:
        self._done.append((slot, getattr(self.worker, method)(*args)))

    def wait(self) -> Tuple[int, Any]:
        return self._done.popleft()

    def restart(self, slot: int) -> None:
        raise AssertionError("the local worker lives as long as the search")

    def close(self) -> None:
        self._done.clear()
