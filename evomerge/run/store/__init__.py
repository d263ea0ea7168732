"""The run directory: one SQLite database (WAL), the single source of truth of a run.

Every proposal is stored when the searcher makes it (`pending`), marked `running` with its
worker when it is sent out, and completed (`ok`, `failed` or `raced`) when its result arrives,
in any order; each result lands in the same transaction as its `tell` in the event log, before
the searcher hears of it. So a run killed at any moment resumes, re-evaluating only what was in
flight. The parts: schema.py (file, tables, format), evaluations.py (the rows and per-document
scores, typed queries), archive.py (a quality-diversity run's map), confirmations.py (finalists' scores on the confirmation tasks, and the
standings they decide), events.py (the log), views.py (the files beside the database).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from evomerge.run.store import schema
from evomerge.run.store.archive import ArchiveTable
from evomerge.run.store.confirmations import Confirmation, Confirmations
from evomerge.run.store.evaluations import DocumentScores, Evaluation, Evaluations
from evomerge.run.store.events import Event, EventLog
from evomerge.run.store.views import BEST_RECIPE, EVALUATIONS, Views

__all__ = ["BEST_RECIPE", "EVALUATIONS", "Confirmation", "DocumentScores", "Evaluation", "Event", "RunStore"]


class RunStore:
    def __init__(self, directory: Path, db):
        self.directory = directory
        self.db = db
        self.evaluations = Evaluations(db)
        self.confirmations = Confirmations(db, self.evaluations)
        self.events = EventLog(db)
        self.archive = ArchiveTable(db)
        self.views = Views(directory, self.evaluations, self.confirmations)

    @staticmethod
    def check_new(directory: Path) -> None:
        schema.check_new(Path(directory))

    @classmethod
    def create(cls, directory: Path, meta: Dict[str, Any]) -> "RunStore":
        directory = Path(directory)
        return cls(directory, schema.create(directory, meta))

    @classmethod
    def open(cls, directory: Path) -> "RunStore":
        directory = Path(directory)
        return cls(directory, schema.open_existing(directory))

    def close(self) -> None:
        self.views.close()
        self.db.close()

    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def meta_or(self, key: str, default: Any) -> Any:
        try:
            return self.meta(key)
        except KeyError:
            return default

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_proposals(self, proposals: Sequence[Evaluation], inputs: Sequence[Any] = ()) -> None:
        """A searcher's ask: its proposals as pending rows, and the ask in the log, in one transaction."""
        with self.db:
            for evaluation in proposals:
                self.evaluations.insert(evaluation)
            self.events.append("ask", None, {"ids": [e.id for e in proposals], "inputs": list(inputs)})

    def add_result(self, evaluation: Evaluation, scores: Optional[DocumentScores] = None,
                   fingerprint: Optional[Dict[str, str]] = None) -> None:
        """A finished evaluation, its per-document scores, its weights' fingerprint and its tell in the
        log, in one transaction, before the searcher hears of it."""
        with self.db:
            self.evaluations.complete(evaluation, scores or {}, fingerprint or {})
            self.events.append("tell", evaluation.id, {})
        self.views.added(evaluation)

    def add_stage(self, evaluation_id: int, stage: int, estimate: float) -> None:
        """A racing stage's estimate, logged because a pruner may learn from it (Optuna's) and relearn it on resume."""
        with self.db:
            self.events.append("stage", evaluation_id, {"stage": stage, "estimate": estimate})

    def put_report(self, name: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO reports VALUES (?, ?)", (name, json.dumps(value)))

    def report(self, name: str) -> Optional[Any]:
        row = self.db.execute("SELECT value FROM reports WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None
