"""A quality-diversity run's map: every cell's elite (cell, evaluation, fitness, measures) in its own
table, and what the map is (its measures, ranges, cells) in the meta table. The loop writes it from the
searcher's archive after each tell and after a replay, so a resumed run's table is the one an
uninterrupted run would have."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Optional

from evomerge.searchers import Archive, Elite

MAP = "archive"  # the meta key of the map's measures, ranges, shape and kind


class ArchiveTable:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def replace(self, archive: Archive) -> None:
        """The table becomes the searcher's archive, whole, in one transaction."""
        with self.db:
            self.db.execute("DELETE FROM archive")
            self.db.executemany("INSERT INTO archive VALUES (?, ?, ?, ?, ?)",
                                [(e.index, json.dumps(e.cell), e.evaluation, e.objective, json.dumps(e.measures))
                                 for e in archive.elites])
            description = {k: v for k, v in asdict(archive).items() if k != "elites"}
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MAP, json.dumps(description)))

    def read(self) -> Optional[Archive]:
        """The stored map, elites by cell index; None for a run whose searcher keeps none."""
        found = self.db.execute("SELECT value FROM meta WHERE key = ?", (MAP,)).fetchone()
        if found is None:
            return None
        description = json.loads(found[0])
        elites = tuple(Elite(index, tuple(json.loads(cell)), evaluation, objective, tuple(json.loads(measures)))
                       for index, cell, evaluation, objective, measures in self.db.execute(
                           "SELECT cell, coordinates, evaluation, objective, measures FROM archive ORDER BY cell"))
        return Archive(tuple(description["measures"]), tuple(tuple(r) for r in description["ranges"]),
                       tuple(description["shape"]), description["kind"], elites)
