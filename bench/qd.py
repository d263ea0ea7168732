"""Quality-diversity search (the `qd` searcher) against NSGA-II and CMA-ES on the real-model zoo, at equal budget.

    python bench/qd.py [--seeds 3] [--evaluations 40] [--limit 32] [--report-limit 100] [--threads 1] [--write-docs]

For each seed, five searches of the same recipe (task arithmetic of SmolLM2-135M and its `rev` and `sort`
fine-tunes, evomerge/zoo/real.py) with the same budget: `qd` with its defaults (the measures being the two
search tasks, CMA-ME's emitter) and with its two other emitters, Optuna's NSGA-II on the two tasks as
separate objectives, and CMA-ES on their mean. Each run's
successful evaluations fill the same ribs GridArchive as the `qd` run's map (measures: the two search-task
scores; objective: the fitness), and the table gives its QD-score (the sum of its elites' fitness) and its
coverage (the share of cells filled). Then, for a few balances w of the two tasks, the elite of the `qd` map
that scores best at that balance (the largest w · measures) and the CMA-ES winner are scored on the report
tasks (never searched on), and the table gives w · (held-out scores) for both.

--write-docs writes the table into docs/benchmarks/qd.md (bench/pages.py).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from pages import write_table
from ribs.archives import GridArchive

from evomerge.run.replay import flat_scores
from evomerge.run.start import SearchOptions, start_search
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.searchers import Archive, Elite
from evomerge.searchers.qd import measure
from evomerge.zoo.real import SPECIALTIES, write_real_recipe

ZOO = Path(__file__).resolve().parent.parent / "recipes" / "zoo-real"
SEARCHERS = {  # "qd" is the searcher's defaults; the emitter that fills the most of the map is its default
    "qd": ({"name": "qd"}, "sum"),
    "qd gaussian": ({"name": "qd", "emitter": "gaussian"}, "sum"),
    "qd iso_line": ({"name": "qd", "emitter": "iso_line"}, "sum"),
    "NSGA-II": ({"name": "optuna", "sampler": "nsga2", "batch": 8}, "separate"),
    "CMA-ES": ({"name": "cma", "popsize": 8}, "sum"),
}
BALANCES = ((0.75, 0.25), (0.5, 0.5), (0.25, 0.75))  # weights of (rev, sort)


def filled(archive: Archive, evaluations) -> GridArchive:
    """A ribs GridArchive shaped like `archive` (the qd run's map), filled with `evaluations`' successes."""
    grid = GridArchive(solution_dim=1, dims=archive.shape, ranges=archive.ranges)
    for evaluation in evaluations:
        values = [measure(flat_scores(evaluation), key) for key in archive.measures]
        if evaluation.ok and None not in values:
            grid.add([[evaluation.id]], [evaluation.fitness], [values])
    return grid


def for_balance(elites: Sequence[Elite], weights: Tuple[float, ...]) -> Elite:
    """The elite that scores best at this balance of the measures (ties: the fitter)."""
    return max(elites, key=lambda e: (float(np.dot(weights, e.measures)), e.objective))


def held_out(search, genotypes: Dict[int, List[float]], limit: int) -> Dict[int, Tuple[float, ...]]:
    """Each genotype's report-task accuracies, in SPECIALTIES order, on the search's own resident model."""
    spec = search.recipe.spec
    suite = TaskSuite(spec.report_tasks, search.recipe.task_paths(), options=spec.eval, seed=spec.seed)
    materializer = search.worker.materializer
    scorer = LMEvalScorer(suite, materializer.model, materializer.tokenizer, options=spec.eval, limit=limit)
    found = {}
    for key, genotype in genotypes.items():
        materializer.materialize(search.space.decode(np.asarray(genotype)))
        metrics = scorer.score()
        found[key] = tuple(metrics[f"zoo_{s}_report"]["acc"] for s in SPECIALTIES)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--limit", type=int, default=32, help="documents per search task")
    parser.add_argument("--report-limit", type=int, default=100, help="documents per report task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks/qd.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-qd-"))
    scores: Dict[str, List[Tuple[float, float]]] = {label: [] for label in SEARCHERS}
    balanced: List[Tuple[Tuple[float, float], float, float]] = []  # balance, qd elite's, CMA-ES winner's
    for seed in range(args.seeds):
        archive, mine, theirs = None, {}, None  # the map: the "qd" run's, which comes first
        for label, (searcher, objectives) in SEARCHERS.items():
            started = time.perf_counter()
            recipe = write_real_recipe(work, ZOO, f"{label.replace(' ', '-')}-{seed}.yaml", seed=seed,
                                       searcher=searcher, objectives=objectives,
                                       eval={"limit": args.limit, "batch_size": 16},
                                       budget={"evaluations": args.evaluations})
            search = start_search(recipe, work / f"run-{label.replace(' ', '-')}-{seed}", SearchOptions(quiet=True))
            search.run()
            archive = archive or search.store.archive.read()
            grid = filled(archive, search.store.evaluations.finished())
            scores[label].append((grid.stats.qd_score, grid.stats.coverage))
            print(f"seed {seed} {label}: QD-score {grid.stats.qd_score:.3f}, coverage {grid.stats.coverage:.1%}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            rows = {e.id: e.genotype for e in search.store.evaluations.finished()}
            if label == "qd":  # its elite for each balance, scored on the report tasks
                picks = {w: for_balance(archive.elites, w).evaluation for w in BALANCES}
                mine = held_out(search, {i: rows[i] for i in set(picks.values())}, args.report_limit)
            elif label == "CMA-ES":
                winner = search.store.evaluations.ranked()[0].id
                theirs = held_out(search, {winner: rows[winner]}, args.report_limit)[winner]
            search.store.close()
            del search
            gc.collect()  # one run's parents and resident model at a time
        for w, pick in picks.items():
            balanced.append((w, float(np.dot(w, mine[pick])), float(np.dot(w, theirs))))
            print(f"seed {seed} balance {w}: qd elite #{pick} {balanced[-1][1]:.3f}, "
                  f"CMA-ES winner #{winner} {balanced[-1][2]:.3f}", flush=True)
    table = _table(scores, balanced, args)
    print("\n" + table)
    if args.write_docs:
        print(f"wrote {write_table('qd', table)}")


def _table(scores, balanced, args) -> str:
    wins = sum(q[0] > n[0] for q, n in zip(scores["qd"], scores["NSGA-II"]))
    default = max((label for label in scores if label.startswith("qd")),
                  key=lambda label: statistics.median(q for q, _ in scores[label]))
    lines = [f"Real-model zoo (SmolLM2-135M, rev + sort fine-tunes), {args.evaluations} evaluations per run, "
             f"{args.limit} documents per search task, {args.seeds} seeds; each run's evaluations fill the same map: "
             "`qd`'s default 10 x 10 grid over the two search-task accuracies, an elite's objective = its fitness "
             "(their mean). QD-score: the sum of the elites' fitness; coverage: the share of cells filled.", "",
             "| searcher | QD-score per seed | median QD-score | coverage per seed | median coverage |",
             "|---|---|---|---|---|"]
    for label, found in scores.items():
        lines.append(f"| {label} | {', '.join(f'{q:.2f}' for q, _ in found)} | {statistics.median(q for q, _ in found):.2f} "
                     f"| {', '.join(f'{c:.0%}' for _, c in found)} | {statistics.median(c for _, c in found):.0%} |")
    lines += ["", f"`qd` (defaults) has a higher QD-score than NSGA-II in {wins} of {len(scores['qd'])} seeds; the "
              f"highest median QD-score of the three emitters: `{default}`.", "",
              f"Held out ({args.report_limit} report documents per task): w · (rev, sort) report accuracy of the "
              "`qd` map's elite for the balance w against the CMA-ES winner's.", "",
              "| balance w (rev, sort) | qd elite per seed | CMA-ES winner per seed | qd better |", "|---|---|---|---|"]
    for w in BALANCES:
        found = [(mine, theirs) for balance, mine, theirs in balanced if balance == w]
        lines.append(f"| {w[0]:g}, {w[1]:g} | {', '.join(f'{m:.3f}' for m, _ in found)} "
                     f"| {', '.join(f'{t:.3f}' for _, t in found)} | {sum(m > t for m, t in found)} of {len(found)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
