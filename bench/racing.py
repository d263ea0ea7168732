"""Racing against full scoring: the same searcher and seed with and without `eval.racing`,
over several seeds, on the demo zoo or the real-model zoo (SmolLM2-135M-Instruct and its
fine-tunes, evomerge/zoo/real.py). The plain run spends its budget; its best search
fitness is the target. The raced run goes on (resumed a generation at a time, up to
`--cap` times the plain budget) until a fully scored candidate reaches the target. For each
seed it prints the documents scored and the wall time until the target was reached by
each run, and both winners' mean score on the report tasks with its standard error.

    python bench/racing.py [--zoo demo|real] [--seeds 3] [--evaluations 64] [--searcher ga] [--threads 1]
                           [--stages 0.25 0.5 1.0] [--confidence 0.95] [--limit N] [--cap 3]
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
from evomerge.search import SearchOptions, resume_search, start_search
from evomerge.zoo.build import build_zoo
from evomerge.zoo.recipe import write_demo_recipe

SEARCHERS = {
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "cma": {"name": "cma", "popsize": 8},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 8},
}


def _recipe(zoo: str, work: Path, label: str, searcher: dict, seed: int, racing: Optional[dict],
            limit: Optional[int]) -> Path:
    evaluation = {**({"racing": racing} if racing else {}), **({"limit": limit} if limit else {})}
    if zoo == "real":
        from evomerge.zoo.real import build_real_zoo, write_real_recipe

        build_real_zoo()
        return write_real_recipe(work, name=f"{label}.yaml", searcher=searcher, seed=seed,
                                 eval={"batch_size": 16, **evaluation})
    build_zoo(DEFAULT_ZOO_DIR)
    return write_demo_recipe(work, name=f"{label}.yaml", searcher=searcher, seed=seed,
                             **({"eval": evaluation} if evaluation else {}))


def _run(recipe: Path, run_dir: Path, evaluations: int, target: Optional[float] = None, step: int = 8,
         cap: int = 0) -> dict:
    """A search of `evaluations`; with a target, resumed `step` evaluations at a time until a fully
    scored candidate reaches it or `cap` evaluations are spent."""
    started = time.perf_counter()
    search = start_search(recipe, run_dir, SearchOptions(evaluations=evaluations, quiet=True))
    best = search.run()
    while target is not None and best.fitness < target and search.store.count() < cap:
        search = resume_search(run_dir, evaluations=search.store.count() + step, quiet=True)
        best = search.run()
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
    parser.add_argument("--zoo", choices=["demo", "real"], default="demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=64)
    parser.add_argument("--searcher", choices=sorted(SEARCHERS), default="ga")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one when anything else runs)")
    parser.add_argument("--stages", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--limit", type=int, help="documents per search task (default: all)")
    parser.add_argument("--cap", type=float, default=3.0, help="the raced run's budget, in plain budgets")
    args = parser.parse_args()
    racing = {"stages": args.stages, "confidence": args.confidence}
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-racing-"))
    searcher = SEARCHERS[args.searcher]
    step = searcher.get("population") or searcher.get("popsize") or searcher.get("batch")
    rows = []
    for seed in range(args.seeds):
        plain = _run(_recipe(args.zoo, work, f"plain-{seed}", searcher, seed, None, args.limit), work / f"plain-{seed}",
                     args.evaluations)
        target = max(e.fitness for e in plain["evaluations"] if e.ok)
        raced = _run(_recipe(args.zoo, work, f"raced-{seed}", searcher, seed, racing, args.limit),
                     work / f"raced-{seed}", args.evaluations, target, step, int(args.cap * args.evaluations))
        rows.append({"seed": seed, "target": target, "plain": plain, "raced": raced,
                     "plain_reach": _reach(plain, target), "raced_reach": _reach(raced, target)})
        print(f"  seed {seed} done", flush=True)

    print(f"\n{args.zoo} zoo, searcher {args.searcher}, {args.evaluations} evaluations in the plain run (the raced run "
          f"until it reaches the plain run's best, at most {args.cap:g}x), {args.threads} torch thread(s), racing stages "
          f"{args.stages} at confidence {args.confidence}" + (f", {args.limit} documents per task" if args.limit else ""))
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
    within = sum(r["plain"]["report"] - r["raced"]["report"] <= max(r["plain"]["stderr"], r["raced"]["stderr"])
                 for r in rows)
    print(f"\nfewer documents with racing (plain / raced), median over seeds: total {statistics.median(totals):.2f}x"
          + (f", to the plain run's best {statistics.median(reached):.2f}x ({len(reached)} of {len(rows)} reached it)"
             if reached else ", the raced runs never reached the plain run's best"))
    print(f"raced winner no worse than the plain winner by more than one standard error on the report tasks: "
          f"{within} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
