"""A run: started or resumed (start.py), the thin search loop (loop.py) over parts that each do one
job — replaying the event log into a fresh searcher (replay.py), keeping worker slots busy (schedule.py),
the pruner that decides after each racing stage (pruner.py), when failures end a run (failures.py), the
one process that holds a run directory (run_lock.py) — the run store, the single source of truth (store/),
its observers (the run's Optuna study and the experiment trackers: observers/), and where candidates
are evaluated: a worker per device (worker.py) in this process or on Ray (pool.py, ray_pool.py),
and what a search will need before anything loads (memory_plan.py, `evomerge plan`). The loop is the
only writer of the store. Nothing is imported here, so that reading a run's store (the plots) loads
neither the merge nor the scorer.
"""
