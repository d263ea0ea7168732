"""The files beside the database, written when they change: `evaluations.jsonl` gains one line per
finished evaluation (per-document scores stay in the database; the whole file is replaced when a
process opens the run), `best.yaml` (a plain mergekit recipe) is replaced only when a new best arrives, and follows the confirmed winner once the
finalists are confirmed.

Observers (the run's Optuna study, experiment trackers: run/observers/) hear of the same events:
the whole run when a process opens it (`rewrite`), each finished evaluation (`added`) once it is
stored, and the end of a run (`finished`). They are views too: a failing one is warned about and
skipped until the run is next opened or finished, when it catches up from the store; a result is
stored before any observer hears of it, so none can lose one."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from evomerge.files import full_disk_said, write_atomically
from evomerge.run.store.confirmations import Confirmations
from evomerge.run.store.evaluations import Evaluation, Evaluations

BEST_RECIPE = "best.yaml"
EVALUATIONS = "evaluations.jsonl"

log = logging.getLogger(__name__)


class Observer(Protocol):
    name: str

    def rewrite(self, finished: Sequence[Evaluation]) -> None:
        """The run's finished evaluations, in the order it finished them: catch up on what this observer has not seen."""

    def added(self, evaluation: Evaluation) -> None:
        """One more finished evaluation, stored."""

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        """The run's report and the files written for it (report, plots)."""

    def close(self) -> None:
        ...


class Views:
    def __init__(self, directory: Path, evaluations: Evaluations, confirmations: Confirmations):
        self.directory = directory
        self.evaluations = evaluations
        self.confirmations = confirmations
        self._best: Optional[Evaluation] = None
        self.observers: List[Observer] = []
        self._failed: Dict[str, bool] = {}  # observers skipped since they failed

    def watch(self, *observers: Observer) -> None:
        self.observers.extend(observers)

    def rewrite(self) -> None:
        """Both files from the database, whole, and every observer caught up: when a process opens the run."""
        finished = self.evaluations.finished()
        write_atomically(self.directory / EVALUATIONS, "".join(json.dumps(asdict(e)) + "\n" for e in finished))
        standings = self.confirmations.standings()
        self._best = None
        if standings:
            self._new_best(standings[0])
        self._failed.clear()
        in_order = self.evaluations.in_finish_order()
        self._tell(lambda observer: observer.rewrite(in_order))

    def added(self, evaluation: Evaluation) -> None:
        """One more finished evaluation: a line, and best.yaml if it is the new best (a tie goes to the earlier)."""
        with full_disk_said(self.directory), (self.directory / EVALUATIONS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(evaluation)) + "\n")  # a torn last line is mended by the next `rewrite`
        best = self._best
        if evaluation.ok and (best is None or (-evaluation.fitness, evaluation.id) < (-best.fitness, best.id)):
            self._new_best(evaluation)
        self._tell(lambda observer: observer.added(evaluation))

    def finished(self, report: Dict[str, Any], files: Sequence[Path]) -> None:
        self._tell(lambda observer: observer.finished(report, files))

    def close(self) -> None:
        self._tell(lambda observer: observer.close())

    def _tell(self, call: Callable[[Observer], None]) -> None:
        for observer in self.observers:
            if self._failed.get(observer.name):
                continue
            try:
                call(observer)
            except Exception as error:  # an observer is a view: the result is stored, the run goes on
                self._failed[observer.name] = True
                log.warning("%s failed (%s: %s); the run goes on without it until it is next opened or finished, "
                            "when %s catches up from the run store", observer.name, type(error).__name__, error,
                            observer.name)

    def _new_best(self, evaluation: Evaluation) -> None:
        write_atomically(self.directory / BEST_RECIPE, evaluation.recipe)
        self._best = evaluation
