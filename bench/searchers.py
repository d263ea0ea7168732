"""Searchers compared on the demo problem: for each searcher and seed, how many
evaluations it needs to reach 95% of the best fitness any run found, its best search
fitness, and its winner's mean score on the report tasks (which no search sees).

    python bench/searchers.py [--seeds 3] [--evaluations 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.search import SearchOptions, start_search
from evomerge.zoo.build import build_zoo
from evomerge.zoo.recipe import write_demo_recipe

SEARCHERS = {
    "cma": {"name": "cma", "popsize": 8},
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "ga-differential": {"name": "ga", "population": 8, "differential": {"f": 0.5, "cr": 0.5}},
    "ga-succession": {"name": "ga", "population": 8, "elitism": 2, "succession": {"step": 0.5, "decay": 0.95}},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 8},
    "random": {"name": "random", "batch": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=64)
    args = parser.parse_args()
    build_zoo(DEFAULT_ZOO_DIR)
    work = Path(tempfile.mkdtemp(prefix="evomerge-searchers-"))
    runs = []
    for label, searcher in SEARCHERS.items():
        for seed in range(args.seeds):
            recipe = write_demo_recipe(work, name=f"{label}-{seed}.yaml", searcher=searcher, seed=seed)
            search = start_search(recipe, work / f"run-{label}-{seed}",
                                  SearchOptions(evaluations=args.evaluations, quiet=True))
            search.run()
            report = search.finish()
            fitness = [e.fitness if e.ok else float("-inf") for e in search.store.evaluations()]
            best_so_far = [max(fitness[: i + 1]) for i in range(len(fitness))]
            winner = next(r for r in report["rows"] if r["role"] == "winner")
            runs.append({"searcher": label, "seed": seed, "curve": best_so_far, "report": winner["mean"]})
            print(f"  {label} seed {seed}: best {best_so_far[-1]:.4f}, report {winner['mean']:.4f}", flush=True)
    target = 0.95 * max(r["curve"][-1] for r in runs)
    for run in runs:
        run["to_target"] = next((i + 1 for i, f in enumerate(run["curve"]) if f >= target), None)

    print(f"\ndemo problem ({args.evaluations} evaluations per run); target = 95% of the best fitness found = {target:.4f}")
    print(f"{'searcher':<16}{'seed':>5}{'evals to target':>17}{'best fitness':>14}{'report mean':>13}")
    for run in runs:
        reached = run["to_target"] if run["to_target"] is not None else f">{args.evaluations}"
        print(f"{run['searcher']:<16}{run['seed']:>5}{reached:>17}{run['curve'][-1]:>14.4f}{run['report']:>13.4f}")
    print(f"\n{'median over seeds':<21}{'evals to target':>17}{'best fitness':>14}{'report mean':>13}")
    for label in SEARCHERS:
        mine = [r for r in runs if r["searcher"] == label]
        reached = statistics.median(r["to_target"] or args.evaluations + 1 for r in mine)
        print(f"{label:<21}{reached:>17g}{statistics.median(r['curve'][-1] for r in mine):>14.4f}"
              f"{statistics.median(r['report'] for r in mine):>13.4f}")


if __name__ == "__main__":
    main()
