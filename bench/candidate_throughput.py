"""Time per candidate: evomerge's resident path vs mergekit-evolve's default on-disk path.

Both score the same candidates of the demo problem on the same lm-eval tasks with the
same document limit, side by side in one process:

- evomerge: merge in place into the resident model (parents resident), then
  `lm_eval.evaluator.evaluate` on tasks built once, bootstrapping off.
- on disk, as mergekit-evolve does it: mergekit's `run_merge` to a temporary folder,
  then `lm_eval.simple_evaluate` with `HFLM(pretrained=folder)` and a TaskManager made
  once (mergekit-evolve leaves `bootstrap_iters` at lm-eval's default of 100000; the
  table also shows the on-disk path with bootstrapping off, to separate the two costs).

    python bench/candidate_throughput.py [--candidates 5] [--limit 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lm_eval
import numpy as np
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from mergekit.options import MergeOptions

from evomerge.merge.materializer import Materializer
from evomerge.merge.write import write_with_mergekit
from evomerge.paths import DEFAULT_ZOO_DIR, RECIPES_DIR, TASKS_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run_options import RunOptions
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo.build import build_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--limit", type=int, default=50, help="documents per task, for both paths")
    args = parser.parse_args()
    build_zoo(DEFAULT_ZOO_DIR)
    recipe = load_recipe(RECIPES_DIR / "demo.yaml")
    space = build_space(recipe)
    rng = np.random.default_rng(0)
    candidates = [space.decode(space.from_unit(rng.uniform(size=space.dimension))) for _ in range(args.candidates)]
    tasks = [t.name for t in recipe.spec.tasks]

    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True))
    scorer = LMEvalScorer(TaskSuite(tasks, [TASKS_DIR]), materializer.model, materializer.tokenizer,
                          limit=args.limit)
    resident, resident_scores = [], []
    for candidate in candidates:
        start = time.perf_counter()
        materializer.materialize(candidate)
        resident_scores.append(scorer.score())
        resident.append(time.perf_counter() - start)

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    work = Path(tempfile.mkdtemp(prefix="evomerge-throughput-"))

    def on_disk(candidate, bootstrap_iters):
        folder = work / "merged"
        start = time.perf_counter()
        write_with_mergekit(candidate, folder, MergeOptions(quiet=True))
        lm = HFLM(pretrained=str(folder), device="cpu", batch_size=64, dtype="float32")
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=args.limit, task_manager=manager,
                                          log_samples=False, bootstrap_iters=bootstrap_iters, verbosity="ERROR")
        shutil.rmtree(folder)
        return time.perf_counter() - start, results["results"]

    default, disk_scores = zip(*(on_disk(c, 100000) for c in candidates))
    no_bootstrap = [on_disk(c, 0)[0] for c in candidates]
    for ours, theirs in zip(resident_scores, disk_scores):
        for task in tasks:
            assert ours[task]["acc"] == theirs[task]["acc,none"], "the two paths must score alike"

    fast = statistics.median(resident)
    print(f"demo problem, {args.candidates} candidates, {len(tasks)} tasks x {args.limit} documents; median seconds per candidate")
    print(f"{'path':<66}{'s/cand':>8}{'ratio':>8}")
    for label, times in [("evomerge: resident parents, in-place merge, tasks built once", resident),
                         ("on disk, as mergekit-evolve (run_merge + HFLM + simple_evaluate)", default),
                         ("on disk, bootstrap_iters=0", no_bootstrap)]:
        print(f"{label:<66}{statistics.median(times):>8.3f}{statistics.median(times) / fast:>7.1f}x")
    print("scores identical on both paths: yes")


if __name__ == "__main__":
    main()
