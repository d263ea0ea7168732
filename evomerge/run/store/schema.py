"""The run database's file, schema and format: created once, checked on every open."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Dict

from evomerge.errors import EvomergeError
from evomerge.files import full_disk_said, is_full_disk
from evomerge.run.run_lock import LOCK_FILE

DATABASE = "run.db"
FORMAT = 4  # 1: searcher checkpoints were pickles; 2: per-document scores were a JSON column, no fingerprints;
# 3: confirmations kept no per-document scores
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
    device TEXT
);
CREATE TABLE IF NOT EXISTS document_scores (
    evaluation INTEGER NOT NULL REFERENCES evaluations (id),
    task TEXT NOT NULL,
    key TEXT NOT NULL,
    scores TEXT NOT NULL,
    PRIMARY KEY (evaluation, task, key)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    evaluation INTEGER PRIMARY KEY REFERENCES evaluations (id),
    tensors TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('ask', 'stage', 'tell')),
    evaluation INTEGER,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    evaluation INTEGER PRIMARY KEY REFERENCES evaluations (id),
    fitness REAL NOT NULL,
    metrics TEXT NOT NULL,
    documents TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS archive (
    cell INTEGER PRIMARY KEY,
    coordinates TEXT NOT NULL,
    evaluation INTEGER NOT NULL REFERENCES evaluations (id),
    objective REAL NOT NULL,
    measures TEXT NOT NULL
);
"""


def check_new(directory: Path) -> None:
    """A run starts only in an empty or new folder, before anything is loaded."""
    if (directory / DATABASE).exists():
        raise EvomergeError("a run already exists here; pass --resume to continue it or choose another --out",
                            path=directory)
    if directory.exists() and (not directory.is_dir() or any(p.name != LOCK_FILE for p in directory.iterdir())):
        raise EvomergeError("expected an empty or new folder for the run", path=directory)


def create(directory: Path, meta: Dict[str, Any]) -> sqlite3.Connection:
    check_new(directory)
    directory.mkdir(parents=True, exist_ok=True)
    db = _connect(directory)
    with db:
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in {**meta, "format": FORMAT}.items()])
    return db


def open_existing(directory: Path) -> sqlite3.Connection:
    """The database of a run made by this format of evomerge, or one line saying why not."""
    path = directory / DATABASE
    if not path.is_file():
        raise EvomergeError(f"not a run directory (no {DATABASE})", path=directory)
    try:
        probe = sqlite3.connect(path)
        found = probe.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        has_recipe = probe.execute("SELECT 1 FROM meta WHERE key = 'recipe_text'").fetchone()
        probe.close()
    except sqlite3.DatabaseError as error:
        raise EvomergeError(f"the run database is unreadable ({error})", path=path) from None
    version = json.loads(found[0]) if found else 1
    if version == 1:
        raise EvomergeError(f"this run was made by an older evomerge (run format 1, expected {FORMAT}); its searcher "
                            "checkpoints are pickles, which evomerge no longer loads: start a new run", path=path)
    if version > FORMAT:
        raise EvomergeError(f"this run was made by a newer evomerge (run format {version}, expected {FORMAT})", path=path)
    if has_recipe is None:
        raise EvomergeError("the run database is unreadable (no recipe stored)", path=path)
    db = _connect(directory)
    if version == 2:
        _from_format_2(db)
    if version <= 3:
        _from_format_3(db)
    return db


def _from_format_2(db: sqlite3.Connection) -> None:
    """Format 2 kept each row's per-document scores as a JSON column; they move to their own table."""
    with db:
        for evaluation, blob in db.execute("SELECT id, document_scores FROM evaluations").fetchall():
            db.executemany("INSERT INTO document_scores VALUES (?, ?, ?, ?)",
                           [(evaluation, task, key, json.dumps(values))
                            for task, found in json.loads(blob).items() for key, values in found.items()])
        db.execute("ALTER TABLE evaluations DROP COLUMN document_scores")
        db.execute("ALTER TABLE evaluations ADD COLUMN device TEXT")


def _from_format_3(db: sqlite3.Connection) -> None:
    """Format 3's confirmations had no per-document scores, which the crowning's paired test needs:
    they are dropped (the run's next finish scores its finalists again) with the old rule's meta."""
    with db:
        db.execute("DROP TABLE confirmations")
        db.executescript(SCHEMA)
        db.execute("DELETE FROM meta WHERE key = 'confirm_top'")
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (json.dumps(FORMAT),))


class _Connection(sqlite3.Connection):
    """Each transaction (`with db:`) that fills the disk ends the run in one line naming its directory."""

    directory: Path

    def __exit__(self, kind, error, traceback):
        with full_disk_said(self.directory):
            super().__exit__(kind, error, traceback)  # commits, or rolls back after an error
            if error is not None and is_full_disk(error):
                raise error
        return False


def _connect(directory: Path) -> sqlite3.Connection:
    db = sqlite3.connect(directory / DATABASE, factory=_Connection)
    db.directory = directory
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a committed result survives a power loss too (cost: docs/benchmarks/store-sync.md)
    db.executescript(SCHEMA)
    return db
