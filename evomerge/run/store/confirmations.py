"""Confirmation scores: the search's finalists scored on tasks it never optimized. They decide the
winner, so the standings (what `best.yaml`, the report and export's ranks follow) are read here."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Dict, List

from evomerge.run.store.evaluations import Evaluation, Evaluations

TOP = "confirm_top"  # the meta key of the recipe's confirm.top, stored when finalists are confirmed


@dataclass(frozen=True)
class Confirmation:
    evaluation: int
    fitness: float  # the confirmation tasks' metrics as one number, higher is better
    metrics: Dict[str, Dict[str, float]]


class Confirmations:
    def __init__(self, db: sqlite3.Connection, evaluations: Evaluations):
        self.db = db
        self.evaluations = evaluations

    def add(self, confirmation: Confirmation) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO confirmations VALUES (?, ?, ?)",
                            (confirmation.evaluation, confirmation.fitness, json.dumps(confirmation.metrics)))

    def all(self) -> Dict[int, Confirmation]:
        """Evaluation id -> its confirmation."""
        return {row[0]: Confirmation(row[0], row[1], json.loads(row[2]))
                for row in self.db.execute("SELECT evaluation, fitness, metrics FROM confirmations")}

    def standings(self) -> List[Evaluation]:
        """Successful evaluations, the winner first: the finalists (the confirmed ones still among the
        search's top `confirm.top`) by their confirmation fitness (ties: the better search rank), then
        the rest in search order. Without finalists this is the search order: one confirmed before a
        resume that has since dropped out of the top is not a finalist, until it is back in it."""
        ranked = self.evaluations.ranked()
        confirmed = self.all()
        top = self.db.execute("SELECT value FROM meta WHERE key = ?", (TOP,)).fetchone()
        order = {e.id: index for index, e in enumerate(ranked)}
        finalists = sorted((e for e in ranked[:json.loads(top[0]) if top else None] if e.id in confirmed),
                           key=lambda e: (-confirmed[e.id].fitness, order[e.id]))
        chosen = {e.id for e in finalists}
        return finalists + [e for e in ranked if e.id not in chosen]
