"""Racing against full scoring on the demo problem: the same searcher and seed with and
without `eval.racing`, over several seeds. For each pair it prints the documents scored
and the wall time until the plain run's final best search fitness is reached (by the
plain run itself, and by the raced run, if ever), the totals, and both winners' mean
score on the report tasks with its standard error.

    python bench/racing.py [--seeds 3] [--evaluations 64] [--searcher ga] [--threads 1]
                           [--stages 0.25 0.5 1.0] [--confidence 0.95]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.search import SearchOptions, start_search
from evomerge.zoo.build import build_zoo
from evomerge.zoo.recipe import write_demo_recipe

SEARCHERS = {
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "cma": {"name": "cma", "popsize": 8},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 8},
}


def _run(work: Path, label: str, searcher: dict, seed: int, evaluations: int, racing: Optional[dict]) -> dict:
    extra = {"eval": {"racing": racing}} if racing else {}
    recipe = write_demo_recipe(work, name=f"{label}.yaml", searcher=searcher, seed=seed, **extra)
    started = time.perf_counter()
    search = start_search(recipe, work / f"run-{label}", SearchOptions(evaluations=evaluations, quiet=True))
    search.run()
    seconds = time.perf_counter() - started
    evaluations_ = search.store.evaluations()
    report = search.finish()
    winner = next(r for r in report["rows"] if r["role"] == "winner")
    # Wall time of an evaluation: when it was stored, from the first one's start.
    first = evaluations_[0].created - (evaluations_[0].materialize_seconds or 0) - (evaluations_[0].evaluate_seconds or 0)
    return {"evaluations": evaluations_, "seconds": seconds, "start": first,
            "report": winner["mean"], "stderr": winner["mean_stderr"]}


def _reach(run: dict, target: float):
    """(documents, seconds) when a fully scored candidate first reached `target`, or None."""
    documents = 0
    for evaluation in run["evaluations"]:
        documents += evaluation.documents
        if evaluation.ok and evaluation.fitness >= target:
            return documents, evaluation.created - run["start"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=64)
    parser.add_argument("--searcher", choices=sorted(SEARCHERS), default="ga")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one when anything else runs)")
    parser.add_argument("--stages", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args()
    racing = {"stages": args.stages, "confidence": args.confidence}
    torch.set_num_threads(args.threads)
    build_zoo(DEFAULT_ZOO_DIR)
    work = Path(tempfile.mkdtemp(prefix="evomerge-racing-"))
    rows = []
    for seed in range(args.seeds):
        plain = _run(work, f"plain-{seed}", SEARCHERS[args.searcher], seed, args.evaluations, racing=None)
        raced = _run(work, f"raced-{seed}", SEARCHERS[args.searcher], seed, args.evaluations, racing=racing)
        target = max(e.fitness for e in plain["evaluations"] if e.ok)
        rows.append({"seed": seed, "target": target, "plain": plain, "raced": raced,
                     "plain_reach": _reach(plain, target), "raced_reach": _reach(raced, target)})
        print(f"  seed {seed} done", flush=True)

    print(f"\ndemo problem, searcher {args.searcher}, {args.evaluations} evaluations per run, {args.threads} torch "
          f"thread(s), racing stages {args.stages} at confidence {args.confidence}")
    print(f"{'seed':>4} {'target':>7} | {'docs to target':>15} {'s to target':>12} | {'docs total':>11} {'s total':>8}"
          f" | {'report mean ± se':>17} | raced")
    for row in rows:
        for name in ("plain", "raced"):
            run, reach = row[name], row[f"{name}_reach"]
            documents = sum(e.documents for e in run["evaluations"])
            to_target = f"{reach[0]:>15} {reach[1]:>12.1f}" if reach else f"{'not reached':>15} {'-':>12}"
            raced_count = sum(e.raced for e in run["evaluations"])
            print(f"{row['seed']:>4} {row['target']:>7.4f} | {to_target} | {documents:>11} {run['seconds']:>8.1f} | "
                  f"{run['report']:>8.4f} ± {run['stderr']:.4f} | {name} ({raced_count} raced)")
    totals = [sum(e.documents for e in r["plain"]["evaluations"]) / sum(e.documents for e in r["raced"]["evaluations"])
              for r in rows]
    reached = [r["plain_reach"][0] / r["raced_reach"][0] for r in rows if r["raced_reach"]]
    within = sum(abs(r["raced"]["report"] - r["plain"]["report"]) <= max(r["plain"]["stderr"], r["raced"]["stderr"])
                 for r in rows)
    print(f"\nfewer documents with racing (plain / raced), median over seeds: total {statistics.median(totals):.2f}x"
          + (f", to the plain run's best {statistics.median(reached):.2f}x ({len(reached)} of {len(rows)} reached it)"
             if reached else ", the raced runs never reached the plain run's best"))
    print(f"raced winner within one standard error of the plain winner on the report tasks: {within} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
