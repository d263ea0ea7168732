"""The search loop: the only place that knows the recipe, space, searcher, workers and store together.

ask → store as pending → send to a free worker (merge in place, score with lm-eval, racing
stage by stage) → store the result → tell. The parts each do one job: replay.py rebuilds the
searcher from the store's log, schedule.py keeps the pool's slots busy (retries, lost workers),
pruner.py decides after each racing stage; this module wires them and is the only writer of
the store. A run killed at any moment loses nothing stored and re-runs only what was in flight.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Iterator, List, Optional

from tqdm.auto import tqdm

from evomerge.errors import SECTION, EvomergeError
from evomerge.merge.materializer import default_device
from evomerge.recipe.loading import Recipe
from evomerge.recipe.validate import check_search
from evomerge.run.failures import FailurePolicy
from evomerge.run.memory_plan import check_fits
from evomerge.run.observers import observers, require_trackers
from evomerge.run.pool import LocalPool, Outcome, Pool
from evomerge.run.pruner import Pruner, make_pruner
from evomerge.run.replay import replay, tell
from evomerge.run.resolution import resolution_line
from evomerge.run.run_lock import RunLock
from evomerge.run.schedule import Finished, Schedule, Staged
from evomerge.run.store import Evaluation, RunStore
from evomerge.run.worker import Worker, scoring
from evomerge.run_options import RunOptions
from evomerge.scoring.tasks import TaskSuite
from evomerge.searchers import Proposal, Searcher, make_searcher


class SearchInterrupted(Exception):
    """Ctrl-C or SIGTERM: everything evaluated so far is stored."""


def confirmation_suite(recipe: Recipe) -> Optional[TaskSuite]:
    """The confirmation tasks, loaded (so an unknown one is refused) before anything else loads."""
    spec = recipe.spec
    if not spec.confirm.tasks:
        return None  # the search tasks' held-back documents confirm instead (run/worker.py)
    return TaskSuite(spec.confirm.tasks, recipe.task_paths(), source=recipe.path, key=f"{SECTION}.confirm.tasks",
                     options=spec.eval, seed=spec.seed)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sharing_a_device(options: RunOptions) -> int:
    """Workers that share one device: all of them on the CPU, a GPU's worth of --gpus-per-worker shares."""
    if not options.workers:
        return 1
    if options.device == "cpu" or (options.device is None and default_device() == "cpu"):
        return options.workers
    return min(options.workers, int(1 / options.gpus_per_worker)) if options.gpus_per_worker else 1


class Search:
    """The loop and all its state, every attribute set here: what is checked before a run directory exists,
    the store (`bind`), and what `run()` replays from it and keeps up to date (searcher, pruner, failures, counts)."""

    def __init__(self, recipe: Recipe, options: RunOptions, worker_factory: Optional[Callable[..., Any]] = None):
        self.recipe = recipe
        self.options = options
        spec = recipe.spec
        checked = check_search(recipe, allow_pickle=options.allow_pickle)
        require_trackers(recipe)
        self.confirmation = confirmation_suite(recipe)
        self.space = checked.space
        self.separate = spec.objectives == "separate"
        self._searcher_options = checked.searcher
        if not options.ray_address:  # a cluster's devices are not this machine's
            check_fits(recipe, device=options.device, workers=_sharing_a_device(options),
                       trust_remote_code=options.trust_remote_code)
        self._make_worker = functools.partial(Worker, recipe, options)
        self._factory = worker_factory or self._make_worker
        self._local: Optional[Worker] = None
        if options.workers:
            from evomerge.run.ray_pool import require_ray

            require_ray()
            if worker_factory is None:
                scoring(recipe)  # what workers would refuse, refused here, before anything starts
        else:
            self._local = self._factory()
        self.store: Optional[RunStore] = None  # bind()'s
        self.lock: Optional[RunLock] = None  # bind()'s: held while the search lives
        self.searcher: Optional[Searcher] = None  # run()'s, replayed from the store
        self.pruner: Optional[Pruner] = None  # run()'s, when the recipe races or prunes
        self._finished = 0  # evaluations finished, stored ones included
        self._best: Optional[float] = None  # the best fitness so far
        self._failures: Optional[FailurePolicy] = None  # run()'s: when failures end the run
        self._progress: Optional[tqdm] = None

    def bind(self, store: RunStore, lock: RunLock) -> "Search":
        self.store, self.lock = store, lock
        store.set_meta("genes", [asdict(g) for g in self.space.genes])
        store.set_meta("objectives", [f"{t.name}.{t.metric}" for t in self.recipe.spec.tasks]
                       if self.separate else ["fitness"])
        store.views.watch(*observers(self.recipe, store, self.options))
        return self

    @property
    def budget(self) -> int:
        return self.recipe.spec.budget.evaluations

    @property
    def worker(self) -> Worker:
        """A worker in this process, for the report: the one that searched, or one built now."""
        if self._local is None:
            self._local = self._make_worker()
        return self._local

    def fresh_searcher(self) -> Searcher:
        spec = self.recipe.spec
        objectives = len(spec.tasks) if self.separate else 1
        return make_searcher(spec.searcher, self.space.dimension, self.space.to_unit(self.space.x0), spec.seed,
                             objectives, source=self.recipe.path, options=self._searcher_options,
                             genes=self.space.describe())

    def _pool(self) -> Pool:
        if self._local is not None:
            return LocalPool(self._local)
        from evomerge.run.ray_pool import RayPool

        return RayPool(self._factory, self.options.workers, address=self.options.ray_address,
                       device=self.options.device, gpus_per_worker=self.options.gpus_per_worker)

    def run(self) -> Evaluation:
        """Search until the budget is spent; returns the best evaluation."""
        evaluations = self.store.evaluations
        finished = evaluations.finished()
        searcher = self.fresh_searcher()
        self.pruner = make_pruner(self.recipe, self.store, searcher, finished)
        self.searcher = replay(searcher, self.store, self.space.from_unit, self.separate, self.pruner)
        self._store_archive()
        evaluations.requeue_running()
        self.store.confirmations.clear_crown()  # decided again when the run finishes, among every evaluation
        self.store.views.rewrite()
        self._finished = len(finished)
        budget = self.recipe.spec.budget
        self._failures = FailurePolicy(budget.max_failures, budget.max_consecutive_failures, finished)
        self._best = max((e.fitness for e in finished if e.ok), default=None)
        self.store.set_meta("status", "running")
        said = resolution_line(self.recipe, self.confirmation)
        if said and not self.options.quiet:
            tqdm.write(said, file=sys.stderr)
        self._progress = tqdm(total=self.budget, initial=min(self._finished, self.budget), desc="search",
                              disable=self.options.quiet, unit="cand")
        pool = None
        try:
            with _sigterm_as_interrupt():
                pool = self._pool()
                schedule = Schedule(pool, self.store, evaluations.pending())
                bar = [self.pruner.bar] if self.pruner else []
                while True:
                    schedule.fill(lambda: self.budget - self._finished, self._ask, *bar)
                    if schedule.idle:
                        break  # the budget is spent (or nothing more can be asked)
                    event = schedule.next()
                    if isinstance(event, Finished):
                        self._finish(event.evaluation, event.outcome, event.worker)
                    elif isinstance(event, Staged):
                        stop = self.pruner.judge(event.evaluation.id, event.step)
                        schedule.go_on(event.slot, stop, self.pruner.bar())
        except KeyboardInterrupt:
            self.store.set_meta("status", "interrupted")
            raise SearchInterrupted(str(self.store.directory)) from None
        finally:
            if pool is not None:
                pool.close()
            self._progress.close()
        self.store.set_meta("status", "searched")
        ranked = evaluations.ranked()
        if not ranked:
            raise EvomergeError("no candidate succeeded", path=self.store.directory)
        return ranked[0]

    def _ask(self) -> List[Evaluation]:
        """The searcher's next proposals, stored as pending before any is evaluated."""
        proposals = self.searcher.ask()
        fetched = self.searcher.take_fetched()
        rows = [self._pending(p) for p in proposals]
        if rows:
            self.store.add_proposals(rows, fetched)
        return rows

    def _pending(self, proposal: Proposal) -> Evaluation:
        genotype = self.space.from_unit(proposal.genotype)
        return Evaluation(id=proposal.id, generation=proposal.generation, genotype=genotype.tolist(),
                          recipe=self.space.decode(genotype).to_yaml(), status="pending", parents=list(proposal.parents),
                          operator=proposal.operator, info=dict(proposal.info))

    def _store_archive(self) -> None:
        """A quality-diversity searcher's map into the store, as it stands after a tell or a replay."""
        archive = self.searcher.elites()
        if archive is not None:
            self.store.archive.replace(archive)

    def _finish(self, evaluation: Evaluation, outcome: Outcome, worker: str) -> None:
        """Store the result (and its tell in the log), then tell the searcher."""
        result = asdict(outcome)
        scores, weights = result.pop("document_scores"), result.pop("fingerprint")
        evaluation = replace(evaluation, **result, worker=worker, created=time.time())
        self.store.add_result(evaluation, scores, weights)
        self._finished += 1
        if self.pruner:
            self.pruner.finished(evaluation)
        if evaluation.ok and (self._best is None or evaluation.fitness > self._best):
            self._best = evaluation.fitness
        tell(self.searcher, evaluation, self.separate)
        self._store_archive()
        self._progress.set_postfix(best=f"{self._best:.4f}" if self._best is not None else "-",
                                   s_per_cand=f"{(evaluation.materialize_seconds or 0) + (evaluation.evaluate_seconds or 0):.2f}")
        self._progress.update(1)
        stop = self._failures.stop(evaluation, self.searcher.generation_size)
        if stop:
            self.store.set_meta("status", "failed")
            raise EvomergeError(stop, path=self.store.directory)
