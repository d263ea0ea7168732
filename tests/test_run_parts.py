"""The run's parts, each with fakes: the schedule keeps slots busy and survives lost workers, the
racing bound judges a stage against the bar it was scored with, the replay rebuilds a searcher from
the store's log alone. No model, no lm-eval."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any, List, Tuple

import numpy as np
import pytest

from evomerge.errors import EvomergeError
from evomerge.run.pool import Outcome, Step, WorkerLost
from evomerge.run.pruner import OptunaPruner, RacingBound
from evomerge.run.replay import replay, tell
from evomerge.run.schedule import ATTEMPTS, Finished, Schedule, Staged
from evomerge.run.store import Evaluation, RunStore
from evomerge.searchers import SearcherSpec, make_searcher


class FakePool:
    """Slots whose answers the test scripts: `answer(slot, value)` queues what `wait` returns next."""

    def __init__(self, slots: int):
        self.names = [f"fake-{i}" for i in range(slots)]
        self.sent: List[Tuple[int, str, tuple]] = []
        self.restarted: List[int] = []
        self.answers: deque = deque()

    def submit(self, slot: int, method: str, *args: Any) -> None:
        self.sent.append((slot, method, args))

    def wait(self):
        return self.answers.popleft()

    def answer(self, slot: int, value: Any) -> None:
        self.answers.append((slot, value))

    def restart(self, slot: int) -> None:
        self.restarted.append(slot)

    def close(self) -> None:
        pass


def _pending(store: RunStore, count: int) -> List[Evaluation]:
    rows = [Evaluation(id=i, generation=0, genotype=[0.5], recipe="merge_method: linear\n", status="pending")
            for i in range(count)]
    store.add_proposals(rows)
    return rows


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore.create(tmp_path / "run", {"recipe_text": "", "options": {}})


def test_the_schedule_fills_every_slot_then_stops_at_the_budget(store):
    pool = FakePool(2)
    schedule = Schedule(pool, store, _pending(store, 3))
    schedule.fill(lambda: 3, lambda: None)
    assert [(slot, method) for slot, method, _ in pool.sent] == [(0, "begin"), (1, "begin")]
    pool.answer(1, Step(outcome=Outcome("ok", fitness=0.5)))
    finished = schedule.next()
    assert isinstance(finished, Finished) and finished.evaluation.id == 1 and finished.worker == "fake-1"
    schedule.fill(lambda: 2, lambda: None)  # one finished of three: room for the one that waits
    assert pool.sent[-1][:2] == (1, "begin") and store.evaluations.get(2).status == "running"
    schedule.fill(lambda: 1, lambda: pytest.fail("the budget is spent"))


def test_what_one_ask_stores_beyond_the_first_waits_for_the_next_slot(store):
    pool = FakePool(2)
    schedule = Schedule(pool, store, [])
    asks = []

    def ask() -> List[Evaluation]:  # a whole generation at once, as the loop stores it
        asks.append(len(asks))
        return _pending(store, 3) if len(asks) == 1 else []

    schedule.fill(lambda: 3, ask)
    assert [args[0] for _, _, args in pool.sent] == [[0.5], [0.5]] and len(asks) == 1  # the second slot asked nothing
    assert [store.evaluations.get(i).status for i in range(3)] == ["running", "running", "pending"]
    pool.answer(0, Step(outcome=Outcome("ok", fitness=0.5)))
    schedule.next()
    schedule.fill(lambda: 3, ask)
    assert store.evaluations.get(2).status == "running" and len(asks) == 1


def test_a_lost_worker_is_replaced_and_its_candidate_retried_elsewhere_then_failed(store):
    pool = FakePool(2)
    schedule = Schedule(pool, store, _pending(store, 2))
    schedule.fill(lambda: 2, lambda: None)
    pool.answer(0, WorkerLost("killed"))
    assert schedule.next() is None and pool.restarted == [0]
    assert store.evaluations.get(0).status == "pending"
    pool.answer(0, 1234)  # the new worker is ready
    assert schedule.next() is None
    pool.answer(1, Step(outcome=Outcome("ok", fitness=0.1)))
    schedule.next()
    schedule.fill(lambda: 2, lambda: None)
    assert pool.sent[-1][0] == 1  # the retry avoids the slot whose worker it killed
    pool.answer(1, WorkerLost("killed again"))
    failed = schedule.next()
    assert failed.outcome.status == "failed" and f"died {ATTEMPTS} times" in failed.outcome.error
    assert [lost["reason"] for lost in failed.evaluation.info["lost"]] == ["killed", "killed again"]


def test_a_slot_whose_new_worker_dies_while_loading_twice_stops_the_run(store):
    pool = FakePool(1)
    schedule = Schedule(pool, store, _pending(store, 1))
    schedule.fill(lambda: 1, lambda: None)
    pool.answer(0, WorkerLost("out of memory"))
    schedule.next()
    pool.answer(0, WorkerLost("out of memory"))
    schedule.next()  # the first restart died loading
    pool.answer(0, WorkerLost("out of memory"))
    with pytest.raises(EvomergeError, match="died 2 times while loading; the last: out of memory"):
        schedule.next()


def test_a_new_worker_that_never_loads_is_waited_for_only_while_the_budget_has_room(store):
    pool = FakePool(2)  # slot 0's node is gone: its new worker never loads
    schedule = Schedule(pool, store, _pending(store, 2))
    schedule.fill(lambda: 2, lambda: None)
    pool.answer(0, WorkerLost("its node died"))
    schedule.next()
    pool.answer(1, Step(outcome=Outcome("ok", fitness=0.1)))
    schedule.next()
    schedule.fill(lambda: 1, lambda: None)
    assert pool.sent[-1][:2] == (1, "begin") and not schedule.idle  # the lost candidate, on the other slot
    pool.answer(1, Step(outcome=Outcome("ok", fitness=0.2)))
    schedule.next()
    schedule.fill(lambda: 0, lambda: None)
    assert schedule.idle  # the budget is spent: the run ends without slot 0

    alone = Schedule(FakePool(1), store, [])
    alone.slots[0].state = "starting"
    alone.fill(lambda: 1, lambda: None)
    assert not alone.idle  # the only slot's new worker is the run's one way on


def test_a_racing_stage_comes_back_to_the_loop_and_goes_on_or_stops(store):
    pool = FakePool(1)
    schedule = Schedule(pool, store, _pending(store, 1))
    schedule.fill(lambda: 1, lambda: None, lambda: "the bar")
    assert pool.sent[0][2][-1] == "the bar"
    pool.answer(0, Step(1, estimate=0.4, upper=0.6))
    staged = schedule.next()
    assert isinstance(staged, Staged) and staged.step.stage == 1
    schedule.go_on(staged.slot, False, "a higher bar")
    schedule.go_on(staged.slot, True)
    assert pool.sent[1:] == [(0, "advance", ("a higher bar",)), (0, "stop", ())]


def _finished(store: RunStore, evaluation_id: int, fitness: float, scores: List[float]) -> Evaluation:
    """A fully scored candidate in the store, with its per-document scores."""
    row = Evaluation(id=evaluation_id, generation=0, genotype=[0.5], recipe="", status="pending")
    store.add_proposals([row])
    done = replace(row, status="ok", fitness=fitness)
    store.add_result(done, {"task": {"acc": scores}})
    return done


class Optuna:
    """A searcher with its own pruner (Optuna's): its decision on each stage's estimate."""

    def __init__(self, decision):
        self.decision, self.seen = decision, []

    def report(self, evaluation_id, stage, estimate):
        self.seen.append((evaluation_id, stage, estimate))
        return self.decision


def test_the_racing_bound_judges_a_stage_against_the_bar_it_was_scored_with(store):
    first = _finished(store, 0, 0.5, [1.0, 0.0])
    bound = RacingBound(store, rank=1, finished=[first])
    assert bound.bar().fitness == 0.5 and bound.bar().scores == {"task": {"acc": [1.0, 0.0]}}
    better = _finished(store, 1, 0.9, [1.0, 1.0])
    bound.finished(better)
    # The stage was scored against the 0.5 bar: a bound of 0.7 goes on, though the bar is 0.9 now.
    stop, next_bar = bound.judge(7, Step(1, estimate=0.6, upper=0.7, bar=0.5)), bound.bar()
    assert not stop and next_bar.fitness == 0.9
    assert bound.judge(7, Step(2, estimate=0.6, upper=0.7, bar=0.9))
    assert bound.judge(7, Step(2, estimate=0.6, upper=0.95, margin=0.1, bar=0.9))
    assert not OptunaPruner(store, Optuna(False)).judge(7, Step(2, estimate=0.6, upper=0.7, bar=0.9))  # it decides
    stages = [(e.evaluation, e.data["stage"]) for e in store.events.all() if e.kind == "stage"]
    assert stages == [(7, 1), (7, 2), (7, 2), (7, 2)]  # every stage logged, as the searcher saw it


def test_a_replayed_searcher_asks_what_the_run_would_have_asked_next(store):
    spec = SearcherSpec(name="ga", population=4, elitism=1)
    searcher = make_searcher(spec, 2, np.full(2, 0.5), seed=5)
    for generation in range(3):
        proposals = searcher.ask()
        rows = [Evaluation(id=p.id, generation=p.generation, genotype=p.genotype.tolist(), recipe="",
                           status="pending") for p in proposals]
        store.add_proposals(rows, searcher.recorded)
        for row in rows:
            done = replace(row, status="ok", fitness=float(-np.sum((np.array(row.genotype) - 0.3) ** 2)))
            store.add_result(done)
            tell(searcher, done, separate=False)
    rebuilt = replay(make_searcher(spec, 2, np.full(2, 0.5), seed=5), store, np.asarray, separate=False)
    assert [p.genotype.tolist() for p in rebuilt.ask()] == [p.genotype.tolist() for p in searcher.ask()]
    with pytest.raises(EvomergeError, match="does not replay this run's log"):
        replay(make_searcher(spec, 2, np.full(2, 0.5), seed=6), store, np.asarray, separate=False)
