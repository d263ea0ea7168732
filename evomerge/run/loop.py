"""The search loop: the only place that knows the recipe, space, searcher, workers and store together.

ask → store as pending → send to a free worker (merge in place, score with lm-eval, racing
stage by stage) → store the result → tell. Workers are one in this process, or Ray actors
(`--workers N`); the loop keeps every worker busy, takes results in the order they finish
and is the only writer of the store. A searcher is rebuilt on resume by replaying the
store's log, so a run killed at any moment loses nothing stored and re-runs only what
was in flight.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
from tqdm.auto import tqdm

from evomerge.errors import EvomergeError
from evomerge.recipe.model import Recipe, load_recipe
from evomerge.recipe.validate import check_search
from evomerge.run.pool import LocalPool, Pool, Step, WorkerLost
from evomerge.run.store import Evaluation, RunStore
from evomerge.run.worker import Worker, scoring
from evomerge.scoring.racing import Bar, stops
from evomerge.searchers import Proposal, Searcher, make_searcher

RECIPE_COPY = "recipe.yaml"
VIEWS_EVERY = 5.0  # seconds between rewrites of the run's views while it runs
ATTEMPTS = 2  # a candidate whose worker dies this often is stored as failed


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


class SearchInterrupted(Exception):
    """Ctrl-C or SIGTERM: everything evaluated so far is stored."""


def start_search(recipe_path: Path, run_dir: Path, options: SearchOptions = SearchOptions(),
                 worker_factory: Optional[Callable[..., Any]] = None) -> "Search":
    """Validate and load everything first; the run directory is created only for a search that can start."""
    recipe = load_recipe(recipe_path).with_overrides(
        seed=options.seed, evaluations=options.evaluations, searcher=options.searcher)
    RunStore.check_new(run_dir)
    search = Search(recipe, options, worker_factory)
    store = RunStore.create(run_dir, {
        "recipe_path": str(recipe.path), "recipe_text": recipe.text, "options": asdict(options), "status": "new",
    })
    (Path(run_dir) / RECIPE_COPY).write_text(recipe.text, encoding="utf-8")
    return search.bind(store)


def resume_search(run_dir: Path, device: Optional[str] = None, evaluations: Optional[int] = None,
                  quiet: bool = False, workers: Optional[int] = None, ray_address: Optional[str] = None) -> "Search":
    """Continue a stopped run with the options it was started with (the budget may grow; the
    device and the workers may change)."""
    store = RunStore.open(run_dir)
    stored = SearchOptions(**store.meta("options"))
    options = replace(stored, device=device or stored.device, quiet=quiet,
                      evaluations=evaluations or stored.evaluations,
                      workers=stored.workers if workers is None else workers,
                      ray_address=ray_address or stored.ray_address)
    recipe = load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text")).with_overrides(
        seed=options.seed, evaluations=options.evaluations, searcher=options.searcher)
    search = Search(recipe, options)
    if options != replace(stored, quiet=quiet):
        store.set_meta("options", asdict(replace(options, quiet=stored.quiet)))
    return search.bind(store)


def _flat_scores(evaluation: Evaluation) -> Dict[str, float]:
    """'task.metric' -> value (and 'custom.x'), standard errors left out."""
    return {f"{task}.{metric}": value for task, metrics in evaluation.metrics.items()
            for metric, value in metrics.items() if "_stderr" not in metric}


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


@dataclass
class _Slot:
    """A worker slot as the loop sees it: idle, starting (a restarted worker loading), or busy with a candidate."""

    state: str = "idle"
    evaluation: Optional[Evaluation] = None
    failed_starts: int = 0  # restarted workers of this slot that died before they were ready


@dataclass
class _Queue:
    """Stored proposals waiting for a worker, lowest id first; a retry avoids the worker it killed."""

    waiting: List[Evaluation] = field(default_factory=list)
    avoid: Dict[int, int] = field(default_factory=dict)

    def take(self, slot: int, slots: int) -> Optional[Evaluation]:
        for index, evaluation in enumerate(self.waiting):
            if self.avoid.get(evaluation.id) != slot or slots == 1:
                self.avoid.pop(evaluation.id, None)
                return self.waiting.pop(index)
        return None

    def put_back(self, evaluation: Evaluation, avoid: int) -> None:
        self.avoid[evaluation.id] = avoid
        self.waiting.insert(0, evaluation)


class Search:
    store: RunStore

    def __init__(self, recipe: Recipe, options: SearchOptions, worker_factory: Optional[Callable[..., Any]] = None):
        self.recipe = recipe
        self.options = options
        spec = recipe.spec
        checked = check_search(recipe, allow_pickle=options.allow_pickle)
        self.space = checked.space
        self.start = self.space.starting_point()
        self.separate = spec.objectives == "separate"
        self._searcher_options = checked.searcher
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

    def bind(self, store: RunStore) -> "Search":
        self.store = store
        store.set_meta("genes", [asdict(g) for g in self.space.genes])
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

    def _replayed_searcher(self) -> Searcher:
        """A fresh searcher that has replayed the store's log: asks, racing stages and tells, in order."""
        searcher = self.fresh_searcher()
        rows = {e.id: e for e in self.store.rows()}
        for event in self.store.events():
            if event.kind == "ask":
                searcher.replay_inputs(event.data["inputs"])
                proposals = searcher.ask()
                if [p.id for p in proposals] != event.data["ids"] or not all(
                        np.array_equal(self.space.from_unit(p.genotype), rows[p.id].genotype) for p in proposals):
                    raise EvomergeError(f"the searcher does not replay this run's log (at evaluations "
                                        f"{event.data['ids']}); was the run made with other versions of evomerge, "
                                        "Optuna or pycma?", path=self.store.directory)
            elif event.kind == "stage":
                searcher.prune(event.evaluation, event.data["stage"], event.data["estimate"])
            else:
                told = rows[event.evaluation]
                searcher.tell(told.id, self._fitness(told), _flat_scores(told))
        searcher.recorded = []
        return searcher

    def _pool(self) -> Pool:
        if self._local is not None:
            return LocalPool(self._local)
        from evomerge.run.ray_pool import RayPool

        return RayPool(self._factory, self.options.workers, address=self.options.ray_address,
                       device=self.options.device)

    def run(self) -> Evaluation:
        """Search until the budget is spent; returns the best evaluation."""
        self.searcher = self._replayed_searcher()
        self.store.requeue_running()
        self._queue = _Queue(self.store.pending())
        finished = self.store.evaluations()
        self._finished = len(finished)
        self._ok = sorted((-e.fitness, e.id) for e in finished if e.ok)  # best first: the bar is the rank-th
        self._bars: Dict[int, Bar] = {}
        self._failures: List[str] = []  # errors of the failures in a row
        self._views_written = time.monotonic()
        self.store.set_meta("status", "running")
        self._progress = tqdm(total=self.budget, initial=min(self._finished, self.budget), desc="search",
                              disable=self.options.quiet, unit="cand")
        pool = None
        try:
            with _sigterm_as_interrupt():
                pool = self._pool()
                slots = [_Slot() for _ in pool.names]
                while True:
                    self._fill(pool, slots)
                    if all(slot.state == "idle" for slot in slots):
                        break  # the budget is spent (or nothing more can be asked)
                    self._handle(pool, slots, *pool.wait())
        except KeyboardInterrupt:
            self.store.set_meta("status", "interrupted")
            raise SearchInterrupted(str(self.store.directory)) from None
        finally:
            if pool is not None:
                pool.close()
            self._progress.close()
            self.store.write_views()
        self.store.set_meta("status", "searched")
        ranked = self.store.ranked()
        if not ranked:
            raise EvomergeError("no candidate succeeded", path=self.store.directory)
        return ranked[0]

    def _fill(self, pool: Pool, slots: List[_Slot]) -> None:
        """Send a candidate to every idle worker while the budget lasts: a stored one first, else a new proposal."""
        for index, slot in enumerate(slots):
            if slot.state != "idle":
                continue
            busy = sum(s.state == "busy" for s in slots)
            if self._finished + busy >= self.budget:
                return
            evaluation = self._queue.take(index, len(slots)) or self._ask()
            if evaluation is None:
                continue
            self.store.mark_running(evaluation.id, pool.names[index])
            evaluation.attempts += 1
            slot.state, slot.evaluation = "busy", evaluation
            pool.submit(index, "begin", evaluation.genotype, *([self._bar()] if self.recipe.spec.eval.racing else []))

    def _ask(self) -> Optional[Evaluation]:
        """The searcher's next proposals, stored as pending before any is evaluated; the first of them."""
        self.searcher.recorded = []
        proposals = self.searcher.ask()
        if not proposals:
            return None
        rows = [self._pending(p) for p in proposals]
        self.store.add_proposals(rows, self.searcher.recorded)
        self._queue.waiting.extend(rows[1:])
        return rows[0]

    def _pending(self, proposal: Proposal) -> Evaluation:
        genotype = self.space.from_unit(proposal.genotype)
        return Evaluation(id=proposal.id, generation=proposal.generation, genotype=genotype.tolist(),
                          recipe=self.space.decode(genotype).to_yaml(), status="pending", parents=list(proposal.parents),
                          operator=proposal.operator, info=dict(proposal.info))

    def _handle(self, pool: Pool, slots: List[_Slot], index: int, answer: Any) -> None:
        slot = slots[index]
        if isinstance(answer, WorkerLost):
            self._lost(pool, slots, index, answer)
        elif slot.state == "starting":  # a restarted worker has loaded
            slot.state, slot.failed_starts = "idle", 0
        elif answer.outcome is not None:
            slot.state = "idle"
            self._finish(slot.evaluation, answer, pool.names[index])
        else:
            self._race(pool, index, slot.evaluation, answer)

    def _race(self, pool: Pool, index: int, evaluation: Evaluation, step: Step) -> None:
        """After a racing stage: the searcher's pruner, else the bar, decides whether the candidate goes on."""
        self.store.add_stage(evaluation.id, step.stage, step.estimate)
        decision = self.searcher.prune(evaluation.id, step.stage, step.estimate)
        bar = self._bar()
        if stops(decision, bar.fitness + step.margin if bar else None, step.upper):
            pool.submit(index, "stop")
        else:
            pool.submit(index, "advance", bar)

    def _bar(self) -> Optional[Bar]:
        """The rank-th best fully scored candidate so far, with its per-document scores (None: no bar yet)."""
        rank = self.recipe.spec.eval.racing.rank
        if len(self._ok) < rank:
            return None
        _, bar_id = self._ok[rank - 1]
        if bar_id not in self._bars:
            bar = self.store.evaluation(bar_id)
            self._bars[bar_id] = Bar(bar.fitness, sum(bar.metrics.get("custom", {}).values()), bar.document_scores)
        return self._bars[bar_id]

    def _lost(self, pool: Pool, slots: List[_Slot], index: int, lost: WorkerLost) -> None:
        """A worker died: a new one takes its slot; its candidate is retried elsewhere, or failed the second time."""
        slot = slots[index]
        evaluation, was_busy = slot.evaluation, slot.state == "busy"
        if slot.state == "starting":
            slot.failed_starts += 1
            if slot.failed_starts >= ATTEMPTS:
                raise EvomergeError(f"worker {pool.names[index]} died {slot.failed_starts} times while loading; "
                                    f"the last: {lost.reason}", key="--workers")
        pool.restart(index)
        pool.submit(index, "ready")
        slot.state, slot.evaluation = "starting", None
        if not was_busy:
            return
        evaluation.info.setdefault("lost", []).append({"worker": pool.names[index], "reason": lost.reason})
        if evaluation.attempts >= ATTEMPTS:
            self._finish(evaluation, Step(), pool.names[index],
                         error=f"WorkerLost: its worker died {evaluation.attempts} times; the last: {lost.reason}")
        else:
            self.store.mark_pending(evaluation.id)
            self._queue.put_back(evaluation, avoid=index)

    def _finish(self, evaluation: Evaluation, step: Step, worker: str, error: Optional[str] = None) -> None:
        """Store the result (and its tell in the log), then tell the searcher."""
        outcome = step.outcome
        if outcome is not None:
            evaluation = replace(evaluation, **asdict(outcome))
        else:
            evaluation = replace(evaluation, status="failed", error=error)
        evaluation = replace(evaluation, worker=worker, created=time.time())
        self.store.add_result(evaluation)
        self._finished += 1
        if evaluation.ok:
            bisect.insort(self._ok, (-evaluation.fitness, evaluation.id))
        self.searcher.tell(evaluation.id, self._fitness(evaluation), _flat_scores(evaluation))
        self._progress.set_postfix(best=f"{-self._ok[0][0]:.4f}" if self._ok else "-",
                                   s_per_cand=f"{(evaluation.materialize_seconds or 0) + (evaluation.evaluate_seconds or 0):.2f}")
        self._progress.update(1)
        if time.monotonic() - self._views_written > VIEWS_EVERY:
            self.store.write_views()
            self._views_written = time.monotonic()
        self._failures = self._failures + [evaluation.error] if evaluation.failed else []
        if len(self._failures) >= self.searcher.generation_size:
            self.store.set_meta("status", "failed")
            raise EvomergeError(f"the last {len(self._failures)} candidates (a generation) all failed; "
                                f"the first of them: {self._failures[0]}", path=self.store.directory)

    def _fitness(self, evaluation: Evaluation):
        if evaluation.failed:
            return None
        return tuple(evaluation.objectives) if self.separate else (evaluation.fitness,)
