"""Does a search earn its keep? Held-out gain over the start recipe, with its standard error.

Every configuration (searcher × fitness metric × racing) runs once per seed at the largest
budget; a smaller budget's winner is the best of the run's first evaluations, which are what a
run with that budget would have asked and scored (no searcher knows its budget). Each winner
is scored on the report tasks (never searched on) document by document, and compared with the
start recipe on the same documents: the paired gain and its standard error; and with random
search's winner of the same seed and the best parent. The table also shows each run's wall
time. On the real-model zoo the start is the naive recipe `write_real_recipe` writes (task
arithmetic, every fine-tune at weight 0.5) and a better region exists (weights near 1 score
higher held out), so a search has something to find; on the demo zoo the start (every
specialist at 1.0) is already near the optimum.

    python bench/quality.py [--zoo real|demo] [--evaluations 32 96] [--seeds 3] [--threads 1]
                            [--configs random cma tpe ga ga-steady] [--metrics acc p_gold] [--racing off on]
                            [--limit N] [--layer-groups 2] [--confirm TOP]

`--layer-groups` splits each fine-tune's weight into that many layer groups (a gradient of
that many points): two per fine-tune is the 4-gene problem, four the 8-gene one.
`--confirm TOP` crowns the best of the top TOP candidates on the confirmation tasks
(`evomerge.confirm`), which neither the search nor the held-out table sees.
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
from evomerge.outputs.confirmation import confirm_finalists
from evomerge.outputs.scoreboard import paired_gain
from evomerge.recipe import build_space, load_recipe
from evomerge.run.start import SearchOptions, start_search
from evomerge.run_options import RunOptions
from evomerge.scoring import LMEvalScorer, TaskSuite

SEARCHERS = {
    "random": {"name": "random"},
    "cma": {"name": "cma"},  # the default searcher with its defaults (popsize 4 + 3 ln d)
    "tpe": {"name": "optuna", "sampler": "tpe", "batch": 4},
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "ga-steady": {"name": "ga", "population": 8, "elitism": 2, "steady": True},
}


def _recipe(zoo: str, directory: Path, limit, layer_groups: int = 2, **evomerge) -> Path:
    evaluation = {"batch_size": 16, **({"limit": limit} if limit else {})}
    if zoo == "real":
        evomerge.setdefault("search", [{"parameter": "weight", "range": [0.0, 1.2], "layer_groups": layer_groups}])
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


def _gains(gains) -> str:
    return ", ".join(f"{g['value']:+.4f} ± {g['stderr']:.4f}" for g in gains)


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
    parser.add_argument("--layer-groups", type=int, default=2, help="weight genes per fine-tune (real zoo)")
    parser.add_argument("--confirm", type=int, default=0, help="top candidates confirmed before crowning (0: none)")
    args = parser.parse_args()
    if args.confirm and len(args.evaluations) > 1:
        parser.error("--confirm confirms a run's finalists: give one budget (--evaluations N)")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-quality-"))

    start_recipe = _recipe(args.zoo, work, args.limit, args.layer_groups)
    held_out = HeldOut(start_recipe)
    recipe = load_recipe(start_recipe)
    space = build_space(recipe)
    start = space.starting_point()
    materializer = Materializer(start.merge, options=RunOptions(quiet=True))
    parents, parent_scores = {}, {}
    for reference in sorted(start.merge.referenced_models(), key=str):
        materializer.load_parent(reference)
        name = Path(reference.model.path).name
        parent_scores[name] = held_out.scores(materializer)
        parents[name] = held_out.mean(parent_scores[name])
    best_parent = max(parents, key=parents.get)
    materializer.materialize(start)
    start_scores = held_out.scores(materializer)
    print(f"# {args.zoo} zoo, {space.dimension} genes"
          + (f", top {args.confirm} confirmed" if args.confirm else "") + f"; report tasks {', '.join(held_out.suite.names)}; "
          f"{sum(map(len, held_out.documents.values()))} held-out documents")
    print(f"# parents: {', '.join(f'{name} {score:.4f}' for name, score in parents.items())}; "
          f"start {held_out.mean(start_scores):.4f}")
    print("| searcher | metric | racing | budget | winner held out (mean of seeds) | gain over the start per seed "
          "(± s.e., paired) | ≥ 2 s.e. | search wall s (median) |")
    print("|---|---|---|---|---|---|---|---|")
    held = {}  # (config, metric, racing, budget) -> each seed's winner's held-out document scores
    for config, metric, racing in itertools.product(args.configs, args.metrics, args.racing):
        rows = {budget: {"winners": [], "gains": [], "seconds": []} for budget in args.evaluations}
        for seed in range(args.seeds):
            tasks = [{"name": t["name"], "metric": metric, "weight": t["weight"]} for t in recipe.spec.model_dump()["tasks"]]
            confirm = ({"confirm": {"top": args.confirm, "tasks": [t["name"].replace("_search", "_confirm")
                                                                   for t in tasks]}} if args.confirm else {})
            run_recipe = _recipe(args.zoo, work, args.limit, args.layer_groups, searcher=SEARCHERS[config],
                                 tasks=tasks, eval={"racing": racing == "on"},
                                 budget={"evaluations": max(args.evaluations)}, **confirm)
            began = time.time()
            search = start_search(run_recipe, work / f"{config}-{metric}-{racing}-{seed}",
                                  SearchOptions(seed=seed, quiet=True))
            search.run()
            if args.confirm:
                confirm_finalists(search.store, search.recipe, search.space, search.worker.materializer,
                                  search.confirmation, quiet=True)
            finished = search.store.evaluations.finished()
            for budget, row in rows.items():
                if args.confirm:
                    best = search.store.confirmations.standings()[0]
                    row["seconds"].append(time.time() - began)
                else:  # a shorter budget's run is this run's first `budget` evaluations (the same asks)
                    best = min((e for e in finished[:budget] if e.ok), key=lambda e: (-e.fitness, e.id))
                    row["seconds"].append(finished[budget - 1].created - began)
                materializer.materialize(search.space.decode(best.genotype))
                scores = held_out.scores(materializer)
                held.setdefault((config, metric, racing, budget), []).append(scores)
                row["winners"].append(held_out.mean(scores))
                row["gains"].append(paired_gain(held_out.suite, start_scores, scores))
        for budget, row in rows.items():
            gains = row["gains"]
            significant = sum(g["value"] >= 2 * g["stderr"] > 0 for g in gains)
            print(f"| {config} | {metric} | {racing} | {budget} | {statistics.mean(row['winners']):.4f} | "
                  + _gains(gains) + f" | {significant} of {len(gains)} | {statistics.median(row['seconds']):.0f} |", flush=True)
    print("# each winner against random search's of the same seed, metric, racing and budget, and against the best "
          f"parent ({best_parent}), paired, held out:")
    for (config, metric, racing, budget), scores in held.items():
        against = held.get(("random", metric, racing, budget))
        versus_random = [paired_gain(held_out.suite, r, c) for r, c in zip(against, scores)] if against else []
        versus_parent = [paired_gain(held_out.suite, parent_scores[best_parent], c) for c in scores]
        print(f"#   {config} {metric} racing {racing} {budget}: "
              + (f"vs random {_gains(versus_random)}; " if config != "random" and versus_random else "")
              + f"vs {best_parent} {_gains(versus_parent)}")
    print(f"# mean held-out standard error of one model: "
          f"{math.sqrt(sum(np.var(start_scores[t]['acc'], ddof=1) / len(start_scores[t]['acc']) for t in held_out.suite.names)) / len(held_out.suite.names):.4f}")


if __name__ == "__main__":
    main()
