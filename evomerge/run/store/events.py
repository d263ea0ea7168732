"""The event log: every ask (with what the searcher fetched from outside), every racing stage a
searcher was shown and every tell, in order. A fresh searcher that replays it is in the state the
run left it in, so nothing in a run directory is code (no pickles)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Event:
    kind: str  # ask | stage | tell
    evaluation: Optional[int]  # the evaluation a stage or tell is about
    data: Dict[str, Any]  # ask: {"ids": [...], "inputs": [...]}; stage: {"stage": k, "estimate": x}


class EventLog:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def append(self, kind: str, evaluation: Optional[int], data: Dict[str, Any]) -> None:
        """Inside the caller's transaction."""
        self.db.execute("INSERT INTO events (kind, evaluation, data) VALUES (?, ?, ?)", (kind, evaluation, json.dumps(data)))

    def all(self) -> List[Event]:
        return [Event(kind, evaluation, json.loads(data))
                for kind, evaluation, data in self.db.execute("SELECT kind, evaluation, data FROM events ORDER BY seq")]

    def stages(self, evaluation: Optional[int] = None) -> Dict[int, Dict[int, float]]:
        """Racing stages' estimates: evaluation -> stage -> estimate (of one evaluation, or of all)."""
        where, parameters = ("AND evaluation = ?", (evaluation,)) if evaluation is not None else ("", ())
        found: Dict[int, Dict[int, float]] = {}
        for about, data in self.db.execute(f"SELECT evaluation, data FROM events WHERE kind = 'stage' {where} "
                                           "ORDER BY seq", parameters):
            stage = json.loads(data)
            found.setdefault(about, {})[stage["stage"]] = stage["estimate"]
        return found
