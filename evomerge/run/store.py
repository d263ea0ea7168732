"""The run directory: one SQLite database (WAL), the single source of truth of a run.

Every proposal is stored when the searcher makes it (`pending`), marked `running` with its
worker when it is sent out, and completed (`ok`, `failed` or `raced`) when its result
arrives, in any order. Beside the rows, an event log records, in order, every ask (with
what the searcher fetched from outside), every racing stage a searcher was shown and every
tell; a fresh searcher that replays it is in the state the run left it in. So a run killed
at any moment resumes, re-evaluating only what was in flight, and nothing in the
directory is code. The JSON, YAML and Markdown files beside the database are views of it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from evomerge.errors import EvomergeError

DATABASE = "run.db"
BEST_RECIPE = "best.yaml"
EVALUATIONS = "evaluations.jsonl"
FORMAT = 2  # 1: searcher checkpoints were pickles
FINISHED = ("ok", "failed", "raced")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    genotype TEXT NOT NULL,
    recipe TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'ok', 'failed', 'raced')),
    fitness REAL,
    objectives TEXT,
    metrics TEXT NOT NULL,
    error TEXT,
    materialize_seconds REAL,
    evaluate_seconds REAL,
    parents TEXT NOT NULL,
    operator TEXT NOT NULL,
    created REAL NOT NULL,
    documents INTEGER NOT NULL,
    info TEXT NOT NULL,
    worker TEXT,
    attempts INTEGER NOT NULL,
    document_scores TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('ask', 'stage', 'tell')),
    evaluation INTEGER,
    data TEXT NOT NULL
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
    worker: Optional[str] = None  # the worker that evaluated it last
    attempts: int = 0  # times it was sent to a worker (a worker that died takes one)
    document_scores: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)  # raced: each document's scores

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

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


_JSON_FIELDS = ("genotype", "objectives", "metrics", "parents", "info", "document_scores")
_RESULT_FIELDS = ("status", "fitness", "objectives", "metrics", "error", "materialize_seconds", "evaluate_seconds",
                  "created", "documents", "info", "worker", "document_scores")


@dataclass(frozen=True)
class Event:
    kind: str  # ask | stage | tell
    evaluation: Optional[int]  # the evaluation a stage or tell is about
    data: Dict[str, Any]  # ask: {"ids": [...], "inputs": [...]}; stage: {"stage": k, "estimate": x}


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
            store.db.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in {**meta, "format": FORMAT}.items()])
        return store

    @classmethod
    def open(cls, directory: Path) -> "RunStore":
        directory = Path(directory)
        if not (directory / DATABASE).is_file():
            raise EvomergeError(f"not a run directory (no {DATABASE})", path=directory)
        try:
            db = sqlite3.connect(directory / DATABASE)
            found = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            db.close()
            if found is None or json.loads(found[0]) != FORMAT:
                raise EvomergeError(f"this run was made by an older evomerge (run format {json.loads(found[0]) if found else 1}, "
                                    f"expected {FORMAT}); its searcher checkpoints are pickles, which evomerge no longer "
                                    "loads: start a new run", path=directory / DATABASE)
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

    @staticmethod
    def _row(evaluation: Evaluation) -> Dict[str, Any]:
        row = asdict(evaluation)
        for name in _JSON_FIELDS:
            row[name] = json.dumps(row[name])
        return row

    def add_proposals(self, proposals: Sequence[Evaluation], inputs: Sequence[Any] = ()) -> None:
        """A searcher's ask: its proposals as pending rows, and the ask in the log, in one transaction."""
        with self.db:
            for evaluation in proposals:
                row = self._row(evaluation)
                self.db.execute(f"INSERT INTO evaluations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                tuple(row.values()))
            self._log("ask", None, {"ids": [e.id for e in proposals], "inputs": list(inputs)})

    def mark_running(self, evaluation_id: int, worker: str) -> None:
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'running', worker = ?, attempts = attempts + 1 "
                            "WHERE id = ?", (worker, evaluation_id))

    def mark_pending(self, evaluation_id: int) -> None:
        """Back in the queue: its worker died (or the run stopped) before it finished."""
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'pending' WHERE id = ?", (evaluation_id,))

    def requeue_running(self) -> None:
        """What was in flight when the run stopped goes back in the queue, attempts reset."""
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'pending', attempts = 0 WHERE status = 'running'")

    def add_result(self, evaluation: Evaluation) -> None:
        """A finished evaluation and its tell in the log, in one transaction, before the searcher hears of it."""
        row = self._row(evaluation)
        with self.db:
            self.db.execute(f"UPDATE evaluations SET {', '.join(f'{k} = ?' for k in _RESULT_FIELDS)} WHERE id = ?",
                            tuple(row[k] for k in _RESULT_FIELDS) + (evaluation.id,))
            self._log("tell", evaluation.id, {})

    def add_stage(self, evaluation_id: int, stage: int, estimate: float) -> None:
        """A racing stage's estimate, logged because the searcher is shown it (Optuna's pruners)."""
        with self.db:
            self._log("stage", evaluation_id, {"stage": stage, "estimate": estimate})

    def _log(self, kind: str, evaluation: Optional[int], data: Dict[str, Any]) -> None:
        self.db.execute("INSERT INTO events (kind, evaluation, data) VALUES (?, ?, ?)", (kind, evaluation, json.dumps(data)))

    def events(self) -> List[Event]:
        return [Event(kind, evaluation, json.loads(data))
                for kind, evaluation, data in self.db.execute("SELECT kind, evaluation, data FROM events ORDER BY seq")]

    def evaluations(self, where: str = "WHERE status IN ('ok', 'failed', 'raced')", parameters: Tuple = ()) -> List[Evaluation]:
        """Finished evaluations by id (`where` chooses others)."""
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
        """One row, whatever its status."""
        found = self.evaluations("WHERE id = ?", (evaluation_id,))
        return found[0] if found else None

    def rows(self) -> List[Evaluation]:
        """Every row, whatever its status (the log's replay reads them)."""
        return self.evaluations("")

    def pending(self) -> List[Evaluation]:
        return self.evaluations("WHERE status = 'pending'")

    def count(self) -> int:
        """Finished evaluations: what the budget counts."""
        return self.db.execute("SELECT COUNT(*) FROM evaluations WHERE status IN ('ok', 'failed', 'raced')").fetchone()[0]

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
