"""Candidates on Ray workers: (a) measured on this machine, (b) simulated at cluster scale.

(a) The demo search on the zoo, evaluated in this process and on 1 and 2 Ray CPU workers
    (the CPUs shared out, torch threads to match): start-up time and evaluations per minute
    once the workers run (from the first result to the last).
(b) evomerge's own search loop, store and Ray pool with each worker's scorer replaced by a
    sleep drawn from per-candidate costs measured in (a) (normalized to their median; one
    candidate in ten takes 3x): 8, 32 and 128 workers, 1,000 evaluations each, with
    generation-synchronous searchers (CMA-ES and the generational GA, one candidate per
    worker in a generation, a barrier after each) against the steady-state GA
    (asynchronous). Utilization = time the workers slept / (workers x wall time from the
    first candidate sent to the last result).

    python bench/workers.py [--evaluations 24] [--simulated 1000] [--median 0.25] [--sizes 8,32,128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.run.pool import Outcome, Step
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.zoo.build import build_zoo
from evomerge.zoo.recipe import write_demo_recipe


class SleepWorker:
    """A worker whose scorer is a sleep: what the loop, the store and Ray cost around a candidate."""

    def __init__(self, costs: List[float], seed: int, threads=None):
        self.costs = costs
        self.rng = np.random.default_rng(seed + os.getpid())

    def ready(self) -> int:
        return os.getpid()

    def begin(self, genotype: List[float]) -> Step:
        seconds = float(self.rng.choice(self.costs)) * (3.0 if self.rng.random() < 0.1 else 1.0)
        time.sleep(seconds)
        fitness = -float(np.sum((np.asarray(genotype) - 0.5) ** 2))  # something for the GA to climb
        return Step(outcome=Outcome("ok", objectives=[fitness], fitness=fitness, materialize_seconds=0.0,
                                    evaluate_seconds=seconds))


def _throughput(evaluations) -> float:
    """Evaluations per minute from the first result to the last."""
    created = sorted(e.created for e in evaluations)
    return 60.0 * (len(created) - 1) / (created[-1] - created[0])


def measured(work: Path, evaluations: int, threads: int) -> List[float]:
    import torch

    build_zoo(DEFAULT_ZOO_DIR)
    recipe = write_demo_recipe(work, searcher={"name": "ga", "population": 8, "steady": True})
    print(f"(a) the demo search on the zoo, {evaluations} evaluations, steady-state GA")
    print("| where | start-up s | evaluations / min | s per candidate (median) |")
    print("|---|---|---|---|")
    costs = []
    for workers in (0, 1, 2):
        torch.set_num_threads(threads)
        started = time.time()
        start_search(recipe, work / f"a-{workers}", SearchOptions(evaluations=evaluations, quiet=True,
                                                                 workers=workers)).run()
        done = RunStore.open(work / f"a-{workers}").evaluations.finished()
        per = [e.materialize_seconds + e.evaluate_seconds for e in done]
        first = min(done, key=lambda e: e.created)
        startup = first.created - first.materialize_seconds - first.evaluate_seconds - started
        name = "in process" if not workers else f"{workers} Ray worker{'s' * (workers > 1)}"
        print(f"| {name} | {startup:.1f} | {_throughput(done):.1f} | {statistics.median(per):.3f} |")
        if workers == 0:
            costs = per
    return costs


def simulated(work: Path, costs: List[float], median: float, total: int, sizes: List[int]) -> None:
    import ray

    scale = median / statistics.median(costs)
    scaled = [c * scale for c in costs]
    print(f"\n(b) simulated: {total} evaluations, sleeps from {len(costs)} measured costs scaled to a median of "
          f"{median} s, one in ten at 3x")
    searchers = {"cma": lambda size: {"name": "cma", "popsize": size},
                 "generational GA": lambda size: {"name": "ga", "population": size, "elitism": 0},
                 "steady-state GA": lambda size: {"name": "ga", "population": size, "steady": True}}
    print("| workers | " + " | ".join(f"{name}: utilization | time s" for name in searchers) + " |")
    print("|---|" + "---|---|" * len(searchers))
    for size in sizes:
        ray.init(num_cpus=size, include_dashboard=False, log_to_driver=False)
        cells = []
        for name, searcher in searchers.items():
            tag = f"{size}-{name.replace(' ', '-')}"
            recipe = write_demo_recipe(work, name=f"sim-{tag}.yaml", searcher=searcher(size), eval={"limit": 1})
            run_dir = work / f"b-{tag}"
            start_search(recipe, run_dir, SearchOptions(evaluations=total, quiet=True, workers=size),
                         worker_factory=lambda threads=None: SleepWorker(scaled, seed=size)).run()
            done = RunStore.open(run_dir).evaluations.finished()
            begin = min(e.created - e.evaluate_seconds for e in done)
            end = max(e.created for e in done)
            busy = sum(e.evaluate_seconds for e in done)
            cells += [f"{busy / (size * (end - begin)):.1%}", f"{end - begin:.1f}"]
        ray.shutdown()
        print(f"| {size} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=24, help="per configuration in (a)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in process (a worker gets its share)")
    parser.add_argument("--simulated", type=int, default=1000, help="evaluations per simulated run in (b)")
    parser.add_argument("--median", type=float, default=0.25, help="the simulated median cost, seconds")
    parser.add_argument("--sizes", default="8,32,128", help="simulated worker counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        costs = measured(work, args.evaluations, args.threads)
        simulated(work, costs, args.median, args.simulated, [int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
