"""The run directory: one SQLite database (WAL) holding everything a run has computed.

Every evaluation is committed as it completes, before the searcher hears of it; the
searcher is checkpointed after every generation. A run killed at any moment resumes
from the last checkpoint and re-evaluates nothing that is stored. The JSON, YAML and
Markdown files beside the database are views generated from it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from evomerge.errors import EvomergeError

DATABASE = "run.db"
BEST_RECIPE = "best.yaml"
EVALUATIONS = "evaluations.jsonl"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    genotype TEXT NOT NULL,
    recipe TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'raced')),
    fitness REAL,
    objectives TEXT,
    metrics TEXT NOT NULL,
    error TEXT,
    materialize_seconds REAL,
    evaluate_seconds REAL,
    parents TEXT NOT NULL,
    operator TEXT NOT NULL,
    created REAL NOT NULL,
    documents INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS checkpoints (
    generation INTEGER PRIMARY KEY,
    evaluations INTEGER NOT NULL,
    searcher BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Evaluation:
    id: int
    generation: int
    genotype: List[float]
    recipe: str
    status: str
    fitness: Optional[float] = None
    objectives: Optional[List[float]] = None
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    error: Optional[str] = None
    materialize_seconds: Optional[float] = None
    evaluate_seconds: Optional[float] = None
    parents: List[int] = field(default_factory=list)
    operator: str = ""
    created: float = field(default_factory=time.time)
    documents: int = 0  # lm-eval documents scored, all tasks together (fewer when raced)
    info: Dict[str, Any] = field(default_factory=dict)  # what the searcher said of it (a restart, a trial, a rationale)

    @property
    def ok(self) -> bool:
        """Fully scored: the only evaluations that can win."""
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def raced(self) -> bool:
        """Stopped early by racing: its fitness is an estimate from fewer documents."""
        return self.status == "raced"


_JSON_FIELDS = ("genotype", "objectives", "metrics", "parents", "info")


class RunStore:
    def __init__(self, directory: Path, connection: sqlite3.Connection):
        self.directory = directory
        self.db = connection

    @staticmethod
    def check_new(directory: Path) -> None:
        directory = Path(directory)
        if (directory / DATABASE).exists():
            raise EvomergeError("a run already exists here; pass --resume to continue it or choose another --out",
                                path=directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise EvomergeError("expected an empty or new folder for the run", path=directory)

    @classmethod
    def create(cls, directory: Path, meta: Dict[str, Any]) -> "RunStore":
        directory = Path(directory)
        cls.check_new(directory)
        directory.mkdir(parents=True, exist_ok=True)
        store = cls(directory, cls._connect(directory))
        with store.db:
            store.db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        return store

    @classmethod
    def open(cls, directory: Path) -> "RunStore":
        directory = Path(directory)
        if not (directory / DATABASE).is_file():
            raise EvomergeError(f"not a run directory (no {DATABASE})", path=directory)
        try:
            store = cls(directory, cls._connect(directory))
            store.meta("recipe_text")
        except (sqlite3.DatabaseError, KeyError) as error:
            raise EvomergeError(f"the run database is unreadable ({error})", path=directory / DATABASE) from None
        return store

    @staticmethod
    def _connect(directory: Path) -> sqlite3.Connection:
        db = sqlite3.connect(directory / DATABASE)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(evaluations)")}
        for column, declaration in (("documents", "INTEGER NOT NULL DEFAULT 0"), ("info", "TEXT NOT NULL DEFAULT '{}'")):
            if column not in columns:  # a run directory from before the column existed
                db.execute(f"ALTER TABLE evaluations ADD COLUMN {column} {declaration}")
        return db

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_evaluation(self, evaluation: Evaluation) -> None:
        row = asdict(evaluation)
        for name in _JSON_FIELDS:
            row[name] = json.dumps(row[name])
        columns = ", ".join(row)
        with self.db:
            self.db.execute(f"INSERT INTO evaluations ({columns}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))

    def evaluations(self, where: str = "", parameters: Tuple = ()) -> List[Evaluation]:
        cursor = self.db.execute(f"SELECT * FROM evaluations {where} ORDER BY id", parameters)
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            for name in _JSON_FIELDS:
                row[name] = json.loads(row[name]) if row[name] is not None else None
            rows.append(Evaluation(**row))
        return rows

    def evaluation(self, evaluation_id: int) -> Optional[Evaluation]:
        found = self.evaluations("WHERE id = ?", (evaluation_id,))
        return found[0] if found else None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    def save_checkpoint(self, generation: int, searcher_state: bytes) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                            (generation, self.count(), searcher_state, time.time()))

    def latest_checkpoint(self) -> Optional[Tuple[int, bytes]]:
        row = self.db.execute("SELECT generation, searcher FROM checkpoints ORDER BY generation DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def put_report(self, name: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO reports VALUES (?, ?)", (name, json.dumps(value)))

    def report(self, name: str) -> Optional[Any]:
        row = self.db.execute("SELECT value FROM reports WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def best_fitness(self) -> Optional[float]:
        return self.db.execute("SELECT MAX(fitness) FROM evaluations WHERE status = 'ok'").fetchone()[0]

    def ranked(self) -> List[Evaluation]:
        """Successful evaluations, best first (ties: the earlier one)."""
        return sorted(self.evaluations("WHERE status = 'ok'"), key=lambda e: (-e.fitness, e.id))

    def write_views(self) -> None:
        """best.yaml (a plain mergekit recipe) and evaluations.jsonl, regenerated from the database."""
        lines = "".join(json.dumps(asdict(e)) + "\n" for e in self.evaluations())
        (self.directory / EVALUATIONS).write_text(lines, encoding="utf-8")
        ranked = self.ranked()
        if ranked:
            (self.directory / BEST_RECIPE).write_text(ranked[0].recipe, encoding="utf-8")
