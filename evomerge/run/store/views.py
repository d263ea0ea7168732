"""The files beside the database, written when they change: `evaluations.jsonl` gains one line per
finished evaluation (per-document scores stay in the database), `best.yaml` (a plain mergekit
recipe) is rewritten only when a new best arrives, and follows the confirmed winner once the
finalists are confirmed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from evomerge.run.store.confirmations import Confirmations
from evomerge.run.store.evaluations import Evaluation, Evaluations

BEST_RECIPE = "best.yaml"
EVALUATIONS = "evaluations.jsonl"


class Views:
    def __init__(self, directory: Path, evaluations: Evaluations, confirmations: Confirmations):
        self.directory = directory
        self.evaluations = evaluations
        self.confirmations = confirmations
        self._best: Optional[Evaluation] = None

    def rewrite(self) -> None:
        """Both files from the database, whole: when a process opens the run."""
        finished = self.evaluations.finished()
        (self.directory / EVALUATIONS).write_text("".join(json.dumps(asdict(e)) + "\n" for e in finished),
                                                  encoding="utf-8")
        standings = self.confirmations.standings()
        self._best = None
        if standings:
            self._new_best(standings[0])

    def added(self, evaluation: Evaluation) -> None:
        """One more finished evaluation: a line, and best.yaml if it is the new best (a tie goes to the earlier)."""
        with (self.directory / EVALUATIONS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(evaluation)) + "\n")
        best = self._best
        if evaluation.ok and (best is None or (-evaluation.fitness, evaluation.id) < (-best.fitness, best.id)):
            self._new_best(evaluation)

    def _new_best(self, evaluation: Evaluation) -> None:
        (self.directory / BEST_RECIPE).write_text(evaluation.recipe, encoding="utf-8")
        self._best = evaluation
