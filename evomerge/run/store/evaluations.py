"""The evaluations repository: one row per proposal, from `pending` to `ok`, `failed` or `raced`,
and each fully or partly scored candidate's per-document scores in their own table. Callers ask
typed questions; only this module writes SQL for them."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

FINISHED = ("ok", "failed", "raced")
DocumentScores = Dict[str, Dict[str, List[float]]]  # task -> result key -> each document's value, in run order


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
    device: Optional[str] = None  # where it was merged and scored

    def flat_scores(self) -> Dict[str, float]:
        """'task.metric' -> value (and 'custom.x'), standard errors left out: what a searcher may read."""
        return {f"{task}.{metric}": value for task, metrics in self.metrics.items()
                for metric, value in metrics.items() if "_stderr" not in metric}

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


_JSON_FIELDS = ("genotype", "objectives", "metrics", "parents", "info")
_RESULT_FIELDS = ("status", "fitness", "objectives", "metrics", "error", "materialize_seconds", "evaluate_seconds",
                  "created", "documents", "info", "worker", "device")
_FINISHED_SQL = "status IN ('ok', 'failed', 'raced')"


def _row(evaluation: Evaluation) -> Dict[str, Any]:
    row = asdict(evaluation)
    for name in _JSON_FIELDS:
        row[name] = json.dumps(row[name])
    return row


class Evaluations:
    """Writes happen inside the caller's transaction (`with db:`), so a row and its log event land together."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def insert(self, evaluation: Evaluation) -> None:
        row = _row(evaluation)
        self.db.execute(f"INSERT INTO evaluations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))

    def complete(self, evaluation: Evaluation, scores: DocumentScores, fingerprint: Dict[str, str]) -> None:
        row = _row(evaluation)
        self.db.execute(f"UPDATE evaluations SET {', '.join(f'{k} = ?' for k in _RESULT_FIELDS)} WHERE id = ?",
                        tuple(row[k] for k in _RESULT_FIELDS) + (evaluation.id,))
        self.db.executemany("INSERT OR REPLACE INTO document_scores VALUES (?, ?, ?, ?)",
                            [(evaluation.id, task, key, json.dumps(values))
                             for task, found in scores.items() for key, values in found.items()])
        if fingerprint:
            self.db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?)", (evaluation.id, json.dumps(fingerprint)))

    def mark_running(self, evaluation_id: int, worker: str) -> None:
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'running', worker = ?, attempts = attempts + 1 "
                            "WHERE id = ?", (worker, evaluation_id))

    def mark_pending(self, evaluation_id: int) -> None:
        """Back in the queue: its worker died (or the run stopped) before it finished."""
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'pending' WHERE id = ?", (evaluation_id,))

    def requeue_running(self) -> None:
        """What the process that stopped (or died) left in flight or queued goes back in the queue, its
        attempts reset: the workers that died with it did not fail them."""
        with self.db:
            self.db.execute("UPDATE evaluations SET status = 'pending', attempts = 0 "
                            "WHERE status IN ('running', 'pending')")

    def _select(self, where: str = "", parameters: Sequence[Any] = ()) -> List[Evaluation]:
        cursor = self.db.execute(f"SELECT * FROM evaluations {where} ORDER BY id", tuple(parameters))
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            for name in _JSON_FIELDS:
                row[name] = json.loads(row[name]) if row[name] is not None else None
            rows.append(Evaluation(**row))
        return rows

    def finished(self) -> List[Evaluation]:
        """Finished evaluations by id."""
        return self._select(f"WHERE {_FINISHED_SQL}")

    def in_finish_order(self) -> List[Evaluation]:
        """Finished evaluations in the order the run finished them: their tells' in the event log (wall
        clocks can go back, and differ between the machines of a resumed run)."""
        told = [row[0] for row in self.db.execute(
            "SELECT evaluation FROM events WHERE kind = 'tell' GROUP BY evaluation ORDER BY MIN(seq)")]
        finished = {e.id: e for e in self.finished()}
        return [finished[i] for i in told if i in finished]

    def pending(self) -> List[Evaluation]:
        return self._select("WHERE status = 'pending'")

    def everything(self) -> List[Evaluation]:
        """Every row, whatever its status (the log's replay reads them)."""
        return self._select()

    def get(self, evaluation_id: int) -> Optional[Evaluation]:
        found = self._select("WHERE id = ?", (evaluation_id,))
        return found[0] if found else None

    def ranked(self) -> List[Evaluation]:
        """Successful evaluations, best first (ties: the earlier one)."""
        return sorted(self._select("WHERE status = 'ok'"), key=lambda e: (-e.fitness, e.id))

    def count(self) -> int:
        """Finished evaluations: what the budget counts."""
        return self.db.execute(f"SELECT COUNT(*) FROM evaluations WHERE {_FINISHED_SQL}").fetchone()[0]

    def document_scores(self, evaluation_id: int) -> DocumentScores:
        scores: DocumentScores = {}
        for task, key, values in self.db.execute(
                "SELECT task, key, scores FROM document_scores WHERE evaluation = ?", (evaluation_id,)):
            scores.setdefault(task, {})[key] = json.loads(values)
        return scores

    def fingerprint(self, evaluation_id: int) -> Dict[str, str]:
        """The scored weights' fingerprint (empty for a failed candidate, or a run from before fingerprints)."""
        row = self.db.execute("SELECT tensors FROM fingerprints WHERE evaluation = ?", (evaluation_id,)).fetchone()
        return json.loads(row[0]) if row else {}
