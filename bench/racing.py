"""Racing against full scoring: the same searcher and seed with and without `eval.racing`,
over several seeds, on the demo zoo or the real-model zoo (SmolLM2-135M-Instruct and its
fine-tunes, evomerge/zoo/real.py). Both runs spend the same budget; each winner is scored on
the report tasks. The plain run's best search fitness is the target: the raced run then goes
on (resumed a generation at a time, up to `--cap` times the budget) until a fully scored
candidate reaches it. For each seed it prints the documents scored in the budget, the
documents and wall time each run took to reach the target and to come within one standard
error of it (the target's own, from its accuracies), and both winners' mean report score,
with how often the plain winners of two different seeds pass the same test.
It also prints the ceiling of any racer on the plain run's candidates (see `_ceiling`).

    python bench/racing.py [--zoo demo|real] [--seeds 3] [--evaluations 64] [--searcher ga] [--threads 1]
                           [--stages 0.125 0.25 0.5 1.0] [--confidence 0.95] [--margin 0] [--limit N] [--cap 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from evomerge.outputs.finish import finish_run
from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run_options import RunOptions
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


def _run(recipe: Path, run_dir: Path, evaluations: int) -> dict:
    """A search of `evaluations`, its winner scored on the report tasks."""
    started = time.perf_counter()
    search = start_search(recipe, run_dir, SearchOptions(evaluations=evaluations, quiet=True))
    search.run()
    seconds = time.perf_counter() - started
    evaluations_ = search.store.evaluations.finished()
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    winner = next(r for r in report["rows"] if r["role"] == "winner")
    # Wall time of an evaluation: when it was stored, from the first one's start.
    first = evaluations_[0].created - (evaluations_[0].materialize_seconds or 0) - (evaluations_[0].evaluate_seconds or 0)
    return {"evaluations": evaluations_, "seconds": seconds, "start": first, "report": winner["mean"],
            "stderr": winner["mean_stderr"], "documents": sum(e.documents for e in evaluations_),
            "raced": sum(e.raced for e in evaluations_)}  # in the budget, whatever `_extend` adds


def _extend(run: dict, run_dir: Path, target: float, step: int, cap: int) -> None:
    """Resume the run `step` evaluations at a time until a fully scored candidate reaches `target`
    or `cap` evaluations are spent; its evaluations then include the extension."""
    count = len(run["evaluations"])
    while _reach(run, target) is None and count < cap:
        search = resume_search(run_dir, RunOptions(quiet=True), evaluations=count + step)
        search.run()
        run["evaluations"] = search.store.evaluations.finished()
        count = len(run["evaluations"])


def _reach(run: dict, target: float):
    """(documents, seconds, evaluations) when a fully scored candidate first reached `target`, or None."""
    documents = 0
    for count, evaluation in enumerate(run["evaluations"], 1):
        documents += evaluation.documents
        if evaluation.ok and evaluation.fitness >= target:
            return documents, evaluation.created - run["start"], count
    return None


def _ceiling(run: dict, first_stage: float, until: Optional[float] = None) -> float:
    """The most a racer could save on the plain run's own candidates (plain / raced documents) if it
    knew every full fitness: each candidate that does not beat the best so far (a tie cannot win)
    stops after the first stage, each that beats it is scored in full. With `until`, only up to the
    candidate that first reached that fitness (the ceiling of "to the plain best")."""
    best, plain, documents = None, 0, 0.0
    for evaluation in run["evaluations"]:
        plain += evaluation.documents
        if not evaluation.ok:
            documents += evaluation.documents
            continue
        beats = best is None or evaluation.fitness > best
        documents += evaluation.documents * (1.0 if beats else first_stage)
        best = evaluation.fitness if best is None else max(best, evaluation.fitness)
        if until is not None and evaluation.fitness >= until:
            break
    return plain / documents


def _stderr(evaluation, weights: Dict[str, float]) -> float:
    """The standard error of a fitness of weighted 0/1 accuracies, each task with an equal share of the
    documents (as in both zoos)."""
    n = evaluation.documents / len(weights)
    return math.sqrt(sum(w * w * evaluation.metrics[t]["acc"] * (1 - evaluation.metrics[t]["acc"]) / (n - 1)
                         for t, w in weights.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=["demo", "real"], default="demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=64)
    parser.add_argument("--searcher", choices=sorted(SEARCHERS), default="ga")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one when anything else runs)")
    parser.add_argument("--stages", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--margin", type=float, default=0.0, help="racing's margin, in the bar's standard errors")
    parser.add_argument("--limit", type=int, help="documents per search task (default: all)")
    parser.add_argument("--cap", type=float, default=3.0, help="the raced run's budget, in plain budgets")
    args = parser.parse_args()
    racing = {"stages": args.stages, "confidence": args.confidence, "margin": args.margin}
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-racing-"))
    searcher = SEARCHERS[args.searcher]
    step = searcher.get("population") or searcher.get("popsize") or searcher.get("batch")
    rows = []
    for seed in range(args.seeds):
        recipe = _recipe(args.zoo, work, f"plain-{seed}", searcher, seed, None, args.limit)
        weights = {t.name: t.weight for t in load_recipe(recipe).spec.tasks}
        plain = _run(recipe, work / f"plain-{seed}", args.evaluations)
        best = max((e for e in plain["evaluations"] if e.ok), key=lambda e: e.fitness)
        near = best.fitness - _stderr(best, weights)
        raced = _run(_recipe(args.zoo, work, f"raced-{seed}", searcher, seed, racing, args.limit),
                     work / f"raced-{seed}", args.evaluations)
        _extend(raced, work / f"raced-{seed}", best.fitness, step, int(args.cap * args.evaluations))
        rows.append({"seed": seed, "target": best.fitness, "near": near, "plain": plain, "raced": raced})
        print(f"  seed {seed} done", flush=True)

    print(f"\n{args.zoo} zoo, searcher {args.searcher}, {args.evaluations} evaluations each (the raced run goes on until "
          f"it reaches the plain run's best, at most {args.cap:g}x), {args.threads} torch thread(s), racing stages "
          f"{args.stages} at confidence {args.confidence}, margin {args.margin:g}"
          + (f", {args.limit} documents per task" if args.limit else ""))
    print(f"{'seed':>4} {'target':>7} {'-1 se':>7} | {'docs':>7} {'s':>6} {'raced':>5} | {'docs to target':>14} "
          f"{'s':>6} | {'docs to -1 se':>13} {'s':>6} | {'report mean ± se':>17}")

    def reach(run: dict, target: float, width: int) -> str:
        found = _reach(run, target)
        return f"{found[0]:>{width}} {found[1]:>6.1f}" if found else f"{'not reached':>{width}} {'-':>6}"

    for row in rows:
        for name in ("plain", "raced"):
            run = row[name]
            print(f"{row['seed']:>4} {row['target']:>7.4f} {row['near']:>7.4f} | {run['documents']:>7} "
                  f"{run['seconds']:>6.1f} {run['raced']:>5} | {reach(run, row['target'], 14)} | {reach(run, row['near'], 13)} | "
                  f"{run['report']:>8.4f} ± {run['stderr']:.4f}  {name}")

    def ratio(measure) -> str:
        """plain / raced of `measure(run, row)`, median over the seeds where the raced run has it."""
        values = [measure(r["plain"], r) / measure(r["raced"], r) for r in rows if measure(r["raced"], r)]
        return f"{statistics.median(values):.2f}x ({len(values)} of {len(rows)} seeds)" if values else "never reached"

    def documents_to(key: str):
        return lambda run, row: (_reach(run, row[key]) or (0,))[0]

    def no_worse(run: dict, than: dict) -> bool:
        return than["report"] - run["report"] <= max(than["stderr"], run["stderr"])

    within = sum(no_worse(r["raced"], r["plain"]) for r in rows)
    # The same test between plain runs of different seeds: how often two winners of one search
    # that differ only by chance pass it.
    pairs = [(a["plain"], b["plain"]) for a in rows for b in rows if a is not b]
    print(f"\nfewer documents with racing (plain / raced, median over seeds that reached it): in the budget "
          f"{ratio(lambda run, row: run['documents'])}; to the plain run's best "
          f"{ratio(documents_to('target'))}; to within one standard error of it {ratio(documents_to('near'))}")
    for label, key in (("in the budget", None), ("to the plain run's best", "target")):
        print(f"the most any racer could save on the plain runs' candidates (the ceiling) {label}, median: "
              + ", ".join(f"{statistics.median(_ceiling(r['plain'], first, r.get(key)) for r in rows):.2f}x {name}"
                          for first, name in ((args.stages[0], "with these stages"), (0.0, "with a free first stage"))))
    print(f"raced winner (of the budget) no worse than the plain winner by more than one standard error on the report "
          f"tasks: {within} of {len(rows)} seeds; plain winners of two different seeds: "
          f"{sum(no_worse(a, b) for a, b in pairs)} of {len(pairs)} ordered pairs")


if __name__ == "__main__":
    main()
