"""A run: the thin search loop (loop.py) over parts that each do one job — replaying the event
log into a fresh searcher (replay.py), keeping worker slots busy (schedule.py), the pruner that
decides after each racing stage (pruner.py) — the run store, the single source of truth (store/),
its observers (the run's Optuna study and the experiment trackers: observers/), and where candidates
are evaluated: a worker per device (worker.py) in this process or on Ray (pool.py, ray_pool.py),
and what a search will need before anything loads (memory_plan.py, `evomerge plan`). The loop is the
only writer of the store.
"""

from evomerge.run.loop import (
    Search,
    SearchInterrupted,
    SearchOptions,
    resume_search,
    start_search,
)

__all__ = ["Search", "SearchInterrupted", "SearchOptions", "resume_search", "start_search"]
