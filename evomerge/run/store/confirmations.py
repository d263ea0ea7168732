"""Confirmation scores and the crown: candidates scored again, with the start, on documents that
did not select them, and the run's decision from them. The crown decides the standings (what
`best.yaml`, the report and export's ranks follow), which are read here."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from evomerge.run.store.evaluations import DocumentScores, Evaluation, Evaluations

CROWN = "crown"  # the meta key of the last crowning (outputs/crowning.py writes it)


@dataclass(frozen=True)
class Confirmation:
    evaluation: int
    fitness: float  # the confirmation documents' scores as one number, higher is better
    metrics: Dict[str, Dict[str, float]]
    documents: DocumentScores = field(default_factory=dict)  # each confirmation document's values, for paired tests


class Confirmations:
    def __init__(self, db: sqlite3.Connection, evaluations: Evaluations):
        self.db = db
        self.evaluations = evaluations

    def add(self, confirmation: Confirmation) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO confirmations VALUES (?, ?, ?, ?)",
                            (confirmation.evaluation, confirmation.fitness, json.dumps(confirmation.metrics),
                             json.dumps(confirmation.documents)))

    def all(self) -> Dict[int, Confirmation]:
        """Evaluation id -> its confirmation."""
        return {row[0]: Confirmation(row[0], row[1], json.loads(row[2]), json.loads(row[3]))
                for row in self.db.execute("SELECT evaluation, fitness, metrics, documents FROM confirmations")}

    def crown(self) -> Optional[Dict[str, Any]]:
        """The last crowning: the winner's id, the start's, the finalists and the paired test."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (CROWN,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_crown(self, crown: Dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CROWN, json.dumps(crown)))

    def clear_crown(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM meta WHERE key = ?", (CROWN,))

    def standings(self) -> List[Evaluation]:
        """Evaluations, the winner first: the crowned one (a finalist that beat the start, or the start),
        then the other finalists by their confirmation fitness, then the rest of the successful ones in
        search order. Before any crowning (a run still going) this is the search order."""
        ranked = self.evaluations.ranked()
        crown = self.crown()
        if crown is None:
            return ranked
        confirmed = self.all()
        finalists = sorted((i for i in crown["finalists"] if i in confirmed), key=lambda i: -confirmed[i].fitness)
        first = [crown["winner"]] + [i for i in finalists if i != crown["winner"]]
        head = [e for e in (self.evaluations.get(i) for i in first) if e is not None]
        chosen = {e.id for e in head}
        return head + [e for e in ranked if e.id not in chosen]
