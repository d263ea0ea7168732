"""Keeps every worker slot of a pool busy and turns what the pool answers into events for the loop.

A slot is idle, starting (a restarted worker loading) or busy with one candidate. Stored
proposals wait in a queue, lowest id first; a candidate whose worker died is retried on
another worker, and stored as failed the second time; a slot whose new worker dies twice while
loading stops the run. The loop hears only of finished candidates and of racing stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from evomerge.errors import EvomergeError
from evomerge.run.pool import Outcome, Pool, Step, WorkerLost
from evomerge.run.store import Evaluation, RunStore

ATTEMPTS = 2  # a candidate whose worker dies this often is stored as failed


@dataclass
class Slot:
    state: str = "idle"  # idle | starting | busy
    evaluation: Optional[Evaluation] = None
    failed_starts: int = 0  # restarted workers of this slot that died before they were ready


@dataclass
class Queue:
    """Stored proposals waiting for a worker, lowest id first; a retry avoids the worker it killed."""

    waiting: List[Evaluation] = field(default_factory=list)
    avoid: Dict[int, int] = field(default_factory=dict)

    def take(self, slot: int, slots: int) -> Optional[Evaluation]:
        for index, evaluation in enumerate(self.waiting):
            if self.avoid.get(evaluation.id) != slot or slots == 1:
                self.avoid.pop(evaluation.id, None)
                return self.waiting.pop(index)
        return None

    def put_back(self, evaluation: Evaluation, avoid: int) -> None:
        self.avoid[evaluation.id] = avoid
        self.waiting.insert(0, evaluation)


@dataclass(frozen=True)
class Finished:
    evaluation: Evaluation
    outcome: Outcome  # a failed one when the worker died too often
    worker: str


@dataclass(frozen=True)
class Staged:
    slot: int
    evaluation: Evaluation
    step: Step


class Schedule:
    def __init__(self, pool: Pool, store: RunStore, waiting: List[Evaluation]):
        self.pool = pool
        self.store = store
        self.queue = Queue(waiting)
        self.slots = [Slot() for _ in pool.names]
        self._spent = False

    @property
    def idle(self) -> bool:
        """Nothing to wait for: no candidate in flight, and no new worker loading while the budget has room
        for it (one whose node is gone may never load)."""
        return self.busy == 0 and (self._spent or all(slot.state == "idle" for slot in self.slots))

    @property
    def busy(self) -> int:
        return sum(slot.state == "busy" for slot in self.slots)

    def fill(self, room: Callable[[], int], ask: Callable[[], Optional[List[Evaluation]]],
             *extra: Callable[[], Any]) -> None:
        """Send a candidate to every idle slot while `room()` (what the budget leaves beyond the busy
        slots) allows: a stored one first, else the first that `ask()` stores (the others wait in the
        queue); `extra` gives begin's further arguments."""
        self._spent = room() <= 0
        for index, slot in enumerate(self.slots):
            if slot.state != "idle":
                continue
            if room() - self.busy <= 0:
                return
            evaluation = self.queue.take(index, len(self.slots))
            if evaluation is None:
                self.queue.waiting.extend(ask() or ())
                evaluation = self.queue.take(index, len(self.slots))
            if evaluation is None:
                continue
            self.store.evaluations.mark_running(evaluation.id, self.pool.names[index])
            evaluation.attempts += 1
            slot.state, slot.evaluation = "busy", evaluation
            self.pool.submit(index, "begin", evaluation.genotype, *(give() for give in extra))

    def next(self) -> Union[Finished, Staged, None]:
        """The pool's next answer as the loop needs it; None for what the schedule handled itself."""
        index, answer = self.pool.wait()
        slot = self.slots[index]
        if isinstance(answer, WorkerLost):
            return self._lost(index, answer)
        if slot.state == "starting":  # a restarted worker has loaded
            slot.state, slot.failed_starts = "idle", 0
            return None
        if answer.outcome is not None:
            slot.state = "idle"
            return Finished(slot.evaluation, answer.outcome, self.pool.names[index])
        return Staged(index, slot.evaluation, answer)

    def go_on(self, slot: int, stop: bool, *args: Any) -> None:
        """After a racing stage: stop the candidate (its estimate is its result) or score the next stage."""
        self.pool.submit(slot, "stop") if stop else self.pool.submit(slot, "advance", *args)

    def _lost(self, index: int, lost: WorkerLost) -> Optional[Finished]:
        """A new worker takes the slot; its candidate is retried elsewhere, or failed the second time."""
        slot, name = self.slots[index], self.pool.names[index]
        evaluation, was_busy = slot.evaluation, slot.state == "busy"
        if slot.state == "starting":
            slot.failed_starts += 1
            if slot.failed_starts >= ATTEMPTS:
                raise EvomergeError(f"worker {name} died {slot.failed_starts} times while loading; "
                                    f"the last: {lost.reason}", key="--workers")
        self.pool.restart(index)
        self.pool.submit(index, "ready")
        slot.state, slot.evaluation = "starting", None
        if not was_busy:
            return None
        evaluation.info.setdefault("lost", []).append({"worker": name, "reason": lost.reason})
        if evaluation.attempts >= ATTEMPTS:
            return Finished(evaluation, Outcome("failed", error=f"WorkerLost: its worker died {evaluation.attempts} "
                                                               f"times; the last: {lost.reason}"), name)
        self.store.evaluations.mark_pending(evaluation.id)
        self.queue.put_back(evaluation, avoid=index)
        return None
