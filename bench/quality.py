"""Does a search earn its keep? Held-out gain over the start recipe, with its standard error.

Every configuration (searcher × fitness metric × racing) runs at each budget and seed; its
winner is scored on the report tasks (never searched on) document by document, and compared
with the start recipe on the same documents: the paired gain and its standard error. The
table also shows the best parent and each run's wall time. On the real-model zoo the start is
the naive recipe `write_real_recipe` writes (task arithmetic, every fine-tune at weight 0.5)
and a better region exists (weights near 1 score higher held out), so a search has something
to find; on the demo zoo the start (every specialist at 1.0) is already near the optimum.

    python bench/quality.py [--zoo real|demo] [--evaluations 32 96] [--seeds 3] [--threads 1]
                            [--configs random cma tpe ga ga-steady] [--metrics acc p_gold] [--racing off on]
                            [--limit N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evomerge.merge import Materializer
from evomerge.outputs.scoreboard import paired_gain
from evomerge.recipe import SearchSpace, load_recipe
from evomerge.run.loop import SearchOptions, start_search
from evomerge.scoring import LMEvalScorer, TaskSuite

SEARCHERS = {
    "random": {"name": "random"},
    "cma": {"name": "cma", "popsize": 8},
    "tpe": {"name": "optuna", "sampler": "tpe", "batch": 4},
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "ga-steady": {"name": "ga", "population": 8, "elitism": 2, "steady": True},
}


def _recipe(zoo: str, directory: Path, limit, **evomerge) -> Path:
    evaluation = {"batch_size": 16, **({"limit": limit} if limit else {})}
    if zoo == "real":
        from evomerge.zoo.real import DEFAULT_DIR, build_real_zoo, write_real_recipe

        build_real_zoo(DEFAULT_DIR)
        return write_real_recipe(directory, DEFAULT_DIR, eval={**evaluation, **evomerge.pop("eval", {})}, **evomerge)
    from evomerge.paths import DEFAULT_ZOO_DIR
    from evomerge.zoo.build import build_zoo
    from evomerge.zoo.recipe import write_demo_recipe

    build_zoo(DEFAULT_ZOO_DIR)
    return write_demo_recipe(directory, DEFAULT_ZOO_DIR, eval={**evaluation, **evomerge.pop("eval", {})}, **evomerge)


class HeldOut:
    """The report tasks built once; each model scored document by document on all their documents."""

    def __init__(self, recipe_path: Path):
        recipe = load_recipe(recipe_path)
        self.suite = TaskSuite(recipe.spec.report_tasks, recipe.task_paths(), options=recipe.spec.eval,
                               seed=recipe.spec.seed)
        self.documents = {task: list(range(self.suite.documents(task))) for task in self.suite.names}

    def scores(self, materializer: Materializer):
        return LMEvalScorer(self.suite, materializer.model, materializer.tokenizer).score_documents(self.documents)

    def mean(self, documents) -> float:
        return float(np.mean([np.mean(documents[task]["acc"]) for task in self.suite.names]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=["real", "demo"], default="real")
    parser.add_argument("--evaluations", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", choices=sorted(SEARCHERS), default=list(SEARCHERS))
    parser.add_argument("--metrics", nargs="+", choices=["acc", "p_gold"], default=["acc", "p_gold"])
    parser.add_argument("--racing", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--limit", type=int, help="documents per search task (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one when anything else runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-quality-"))

    start_recipe = _recipe(args.zoo, work, args.limit)
    held_out = HeldOut(start_recipe)
    recipe = load_recipe(start_recipe)
    start = SearchSpace.from_recipe(recipe).starting_point()
    materializer = Materializer(start.merge, quiet=True)
    parents = {}
    for reference in sorted(start.merge.referenced_models(), key=str):
        materializer.load_parent(reference)
        parents[Path(reference.model.path).name] = held_out.mean(held_out.scores(materializer))
    materializer.materialize(start)
    start_scores = held_out.scores(materializer)
    print(f"# {args.zoo} zoo; report tasks {', '.join(held_out.suite.names)}; "
          f"{sum(map(len, held_out.documents.values()))} held-out documents")
    print(f"# parents: {', '.join(f'{name} {score:.4f}' for name, score in parents.items())}; "
          f"start {held_out.mean(start_scores):.4f}")
    print("| searcher | metric | racing | budget | winner held out (mean of seeds) | gain over the start per seed "
          "(± s.e., paired) | ≥ 2 s.e. | search wall s (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for config, metric, racing, budget in itertools.product(args.configs, args.metrics, args.racing,
                                                            args.evaluations):
        winners, gains, seconds = [], [], []
        for seed in range(args.seeds):
            tasks = [{"name": t["name"], "metric": metric, "weight": t["weight"]} for t in recipe.spec.model_dump()["tasks"]]
            run_recipe = _recipe(args.zoo, work, args.limit, searcher=SEARCHERS[config], tasks=tasks,
                                 eval={"racing": racing == "on"}, budget={"evaluations": budget})
            began = time.perf_counter()
            search = start_search(run_recipe, work / f"{config}-{metric}-{racing}-{budget}-{seed}",
                                  SearchOptions(seed=seed, quiet=True))
            best = search.run()
            seconds.append(time.perf_counter() - began)
            materializer.materialize(search.space.decode(best.genotype))
            scores = held_out.scores(materializer)
            winners.append(held_out.mean(scores))
            gains.append(paired_gain(held_out.suite, start_scores, scores))
        significant = sum(g["value"] >= 2 * g["stderr"] > 0 for g in gains)
        print(f"| {config} | {metric} | {racing} | {budget} | {statistics.mean(winners):.4f} | "
              + ", ".join(f"{g['value']:+.4f} ± {g['stderr']:.4f}" for g in gains)
              + f" | {significant} of {len(gains)} | {statistics.median(seconds):.0f} |", flush=True)
    print(f"# mean held-out standard error of one model: "
          f"{math.sqrt(sum(np.var(start_scores[t]['acc'], ddof=1) / len(start_scores[t]['acc']) for t in held_out.suite.names)) / len(held_out.suite.names):.4f}")


if __name__ == "__main__":
    main()
