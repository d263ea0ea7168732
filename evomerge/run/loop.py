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
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from tqdm.auto import tqdm

from evomerge.errors import SECTION, EvomergeError
from evomerge.merge.materializer import default_device
from evomerge.recipe.loading import Recipe, load_recipe
from evomerge.recipe.validate import check_search
from evomerge.run import inputs
from evomerge.run.failures import FailurePolicy
from evomerge.run.memory_plan import check_fits
from evomerge.run.observers import observers, require_trackers
from evomerge.run.pool import LocalPool, Outcome, Pool
from evomerge.run.pruner import make_pruner
from evomerge.run.replay import replay, tell
from evomerge.run.run_lock import RunLock
from evomerge.run.schedule import Finished, Schedule, Staged
from evomerge.run.store import Evaluation, RunStore
from evomerge.run.worker import Worker, scoring
from evomerge.scoring.tasks import TaskSuite
from evomerge.searchers import Proposal, Searcher, make_searcher

RECIPE_COPY = "recipe.yaml"


@dataclass(frozen=True)
class SearchOptions:
    device: Optional[str] = None
    seed: Optional[int] = None
    evaluations: Optional[int] = None
    searcher: Optional[str] = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    quiet: bool = False
    workers: int = 0  # Ray workers; 0: one worker in this process, without Ray
    ray_address: Optional[str] = None  # join this Ray cluster instead of starting a local one
    searcher_options: Dict[str, Any] = field(default_factory=dict)  # over the recipe's (--sigma0, ...)
    batch_size: Optional[int] = None  # lm-eval's
    task_paths: Tuple[str, ...] = ()  # added to the recipe's
    gpus_per_worker: Optional[float] = None  # each Ray worker's share of a GPU; default 1 where the cluster has GPUs


class SearchInterrupted(Exception):
    """Ctrl-C or SIGTERM: everything evaluated so far is stored."""


def start_search(recipe_path: Path, run_dir: Path, options: SearchOptions = SearchOptions(),
                 worker_factory: Optional[Callable[..., Any]] = None) -> "Search":
    """Validate and load everything first; the run directory is created only for a search that can start."""
    recipe = _amended(load_recipe(recipe_path), options)
    RunLock.refuse_held(run_dir)  # a run another process searches is refused naming it, first
    RunStore.check_new(run_dir)
    search = Search(recipe, options, worker_factory)
    lock = RunLock.hold(run_dir)
    store = RunStore.create(run_dir, {
        "recipe_path": str(recipe.path), "recipe_text": recipe.text, "options": asdict(options), "status": "new",
        "inputs": inputs.fingerprint(recipe),
    })
    (Path(run_dir) / RECIPE_COPY).write_text(recipe.text, encoding="utf-8")
    return search.bind(store, lock)


def resume_search(run_dir: Path, device: Optional[str] = None, evaluations: Optional[int] = None,
                  quiet: bool = False, workers: Optional[int] = None, ray_address: Optional[str] = None,
                  allow_changed: bool = False, gpus_per_worker: Optional[float] = None) -> "Search":
    """Continue a stopped run with the options it was started with (the budget may grow; the
    device and the workers may change), on the inputs it started with: a changed parent, task,
    fitness module or library is refused before anything loads, or with `allow_changed`
    recorded in the run (`input_changes`) and taken as the new inputs."""
    store = RunStore.open(run_dir)
    lock = RunLock.hold(run_dir)
    stored = SearchOptions(**store.meta("options"))
    options = replace(stored, device=device or stored.device, quiet=quiet,
                      evaluations=evaluations or stored.evaluations,
                      workers=stored.workers if workers is None else workers,
                      ray_address=ray_address or stored.ray_address,
                      gpus_per_worker=gpus_per_worker or stored.gpus_per_worker)
    recipe = _amended(load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text")), options)
    _check_inputs(store, recipe, allow_changed)
    search = Search(recipe, options)
    if options != replace(stored, quiet=quiet):
        store.set_meta("options", asdict(replace(options, quiet=stored.quiet)))
    return search.bind(store, lock)


def _amended(recipe: Recipe, options: SearchOptions) -> Recipe:
    return recipe.with_overrides(seed=options.seed, evaluations=options.evaluations, searcher=options.searcher,
                                 searcher_options=options.searcher_options, batch_size=options.batch_size,
                                 task_paths=options.task_paths)


def _check_inputs(store: RunStore, recipe: Recipe, allow_changed: bool) -> None:
    current = inputs.fingerprint(recipe)
    found = inputs.changes(store.meta_or("inputs", current), current)
    if not found:
        return
    if not allow_changed:
        raise EvomergeError(f"changed since the run started: {'; '.join(found)}; resume with --allow-changed to "
                            "go on with them (the change is recorded in the run)", path=store.directory)
    store.set_meta("input_changes", store.meta_or("input_changes", []) + [{"time": time.time(), "changes": found}])
    store.set_meta("inputs", current)


def confirmation_suite(recipe: Recipe) -> Optional[TaskSuite]:
    """The confirmation tasks, loaded (so an unknown one is refused) before anything else loads."""
    spec = recipe.spec
    if spec.confirm is None:
        return None
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


def _sharing_a_device(options: SearchOptions) -> int:
    """Workers that share one device: all of them on the CPU, a GPU's worth of --gpus-per-worker shares."""
    if not options.workers:
        return 1
    if options.device == "cpu" or (options.device is None and default_device() == "cpu"):
        return options.workers
    return min(options.workers, int(1 / options.gpus_per_worker)) if options.gpus_per_worker else 1


class Search:
    store: RunStore

    def __init__(self, recipe: Recipe, options: SearchOptions, worker_factory: Optional[Callable[..., Any]] = None):
        self.recipe = recipe
        self.options = options
        spec = recipe.spec
        checked = check_search(recipe, allow_pickle=options.allow_pickle)
        require_trackers(recipe)
        self.confirmation = confirmation_suite(recipe)
        self.space = checked.space
        self.start = self.space.starting_point()
        self.separate = spec.objectives == "separate"
        self._searcher_options = checked.searcher
        if not options.ray_address:  # a cluster's devices are not this machine's
            check_fits(recipe, device=options.device, workers=_sharing_a_device(options),
                       trust_remote_code=options.trust_remote_code)
        self._make_worker = functools.partial(Worker, recipe, device=options.device,
                                              trust_remote_code=options.trust_remote_code, quiet=options.quiet)
        self._factory = worker_factory or self._make_worker
        self._local: Optional[Worker] = None
        if options.workers:
            from evomerge.run.ray_pool import require_ray

            require_ray()
            if worker_factory is None:
                scoring(recipe)  # what workers would refuse, refused here, before anything starts
        else:
            self._local = self._factory()

    def bind(self, store: RunStore, lock: RunLock) -> "Search":
        self.store, self.lock = store, lock  # the lock is held while the search lives
        store.set_meta("genes", [asdict(g) for g in self.space.genes])
        store.set_meta("objectives", [f"{t.name}.{t.metric}" for t in self.recipe.spec.tasks]
                       if self.separate else ["fitness"])
        store.views.watch(*observers(self.recipe, store, quiet=self.options.quiet))
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
        evaluations.requeue_running()
        self.store.views.rewrite()
        self._finished = len(finished)
        budget = self.recipe.spec.budget
        self._failures = FailurePolicy(budget.max_failures, budget.max_consecutive_failures, finished)
        self._best = max((e.fitness for e in finished if e.ok), default=None)
        self.store.set_meta("status", "running")
        self._progress = tqdm(total=self.budget, initial=min(self._finished, self.budget), desc="search",
                              disable=self.options.quiet, unit="cand")
        pool = None
        try:
            with _sigterm_as_interrupt():
                pool = self._pool()
                schedule = Schedule(pool, self.store, evaluations.pending())
                bar = [self.pruner.bar] if self.pruner else []
                while True:
                    schedule.fill(lambda: self.budget - self._finished, lambda: self._ask(schedule), *bar)
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

    def _ask(self, schedule: Schedule) -> Optional[Evaluation]:
        """The searcher's next proposals, stored as pending before any is evaluated; the first of them."""
        self.searcher.recorded = []
        proposals = self.searcher.ask()
        if not proposals:
            return None
        rows = [self._pending(p) for p in proposals]
        self.store.add_proposals(rows, self.searcher.recorded)
        schedule.queue.waiting.extend(rows[1:])
        return rows[0]

    def _pending(self, proposal: Proposal) -> Evaluation:
        genotype = self.space.from_unit(proposal.genotype)
        return Evaluation(id=proposal.id, generation=proposal.generation, genotype=genotype.tolist(),
                          recipe=self.space.decode(genotype).to_yaml(), status="pending", parents=list(proposal.parents),
                          operator=proposal.operator, info=dict(proposal.info))

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
        self._progress.set_postfix(best=f"{self._best:.4f}" if self._best is not None else "-",
                                   s_per_cand=f"{(evaluation.materialize_seconds or 0) + (evaluation.evaluate_seconds or 0):.2f}")
        self._progress.update(1)
        stop = self._failures.stop(evaluation, self.searcher.generation_size)
        if stop:
            self.store.set_meta("status", "failed")
            raise EvomergeError(stop, path=self.store.directory)
