"""When failed candidates end a run: the recipe's `budget.max_consecutive_failures` in a row (by default a
generation, and at least 5, so one transient fault never ends a run, whatever the searcher's batch),
or `budget.max_failures` in the whole run (by default no limit). A run that cannot work fails every
candidate, so it still stops early; the error names the first failure that counted, and its candidate."""

from __future__ import annotations

from typing import List, Optional, Sequence

from evomerge.errors import SECTION
from evomerge.run.store import Evaluation

AT_LEAST = 5  # failures in a row that the default always allows: a transient fault fails one or a few


class FailurePolicy:
    def __init__(self, max_failures: Optional[int], max_consecutive_failures: Optional[int],
                 finished: Sequence[Evaluation]):
        self.max_failures, self.max_consecutive_failures = max_failures, max_consecutive_failures
        self.failed: List[Evaluation] = [e for e in finished if e.failed]  # the run's, for max_failures
        self.in_a_row: List[Evaluation] = []  # this process's, since its last success

    def stop(self, evaluation: Evaluation, generation_size: int) -> Optional[str]:
        """Why the run must stop after this finished evaluation, or None."""
        if not evaluation.failed:
            self.in_a_row = []
            return None
        self.failed.append(evaluation)
        self.in_a_row.append(evaluation)
        limit = self.max_consecutive_failures
        if len(self.in_a_row) >= (limit or max(generation_size, AT_LEAST)):
            setting = f"{SECTION}.budget.max_consecutive_failures: {limit}" if limit else (
                f"by default a generation, at least {AT_LEAST}; set {SECTION}.budget.max_consecutive_failures")
            return f"{len(self.in_a_row)} candidates failed in a row ({setting}); " + _first(self.in_a_row)
        if self.max_failures and len(self.failed) >= self.max_failures:
            return (f"{len(self.failed)} candidates failed ({SECTION}.budget.max_failures: {self.max_failures}); "
                    + _first(self.failed))
        return None


def _first(failed: Sequence[Evaluation]) -> str:
    return f"the first of them, candidate {failed[0].id}: {failed[0].error}"
