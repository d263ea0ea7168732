"""Does a search do no harm, and earn its keep? Two regimes on the real-model zoo, with a ceiling.

- `plateau`: the start already merges well: the weights of the grid's best region (rev 0.2, sort
  1.1; on this zoo the `rev` task vector interferes with `sort`'s, so the region is there and not at
  1.0). A search must not hand back a worse model: the crowned winner's held-out paired difference
  from the start should be no worse than −1 standard error in every seed.
- `poor`: every fine-tune at weight 0.2, and `uniform`: task arithmetic's usual 1.0, which on this
  zoo is poor too. A search must earn its keep: +2 standard errors or more in at least two seeds of
  three, within two standard errors of the ceiling.
- The ceiling (`oracle`): a grid of global weights (one per fine-tune, 0.2 to 1.4), each point
  scored on the held-out report tasks; its best point is the best a search of these weights could
  hand back, seen with hindsight.

Each configuration runs once per seed at the largest budget; a smaller budget's crown is chosen among
the run's first evaluations (what a run of that budget would have asked). Three crowns are compared
on each run: the default (`crown`: finalists by the noise-aware surrogate, confirmed on documents held
back from the search, replacing the start only beyond the noise), `crown-score` (the same, finalists
by search score) and `luckiest` (the single best search score, the rule before). Every crown is
scored on the report tasks, which neither the search nor the crowning saw.

The three parts run as separate processes (two cores: run two at once) and write JSON; `table`
reads them all:

    python bench/quality.py run --regime plateau --out /tmp/q/plateau.json [--evaluations 48 96]
        [--seeds 3] [--configs cma random] [--limit 24] [--held-out 150] [--threads 1]
    python bench/quality.py run --regime poor --out /tmp/q/poor.json
    python bench/quality.py oracle --out /tmp/q/oracle.json
    python bench/quality.py table /tmp/q/*.json [--write-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from evomerge.merge import Materializer
from evomerge.outputs.confirmation import confirm_finalists, confirmation_documents
from evomerge.recipe import build_space, load_recipe
from evomerge.run.start import SearchOptions, start_search
from evomerge.run_options import RunOptions
from evomerge.scoring import LMEvalScorer, TaskSuite
from evomerge.scoring.paired import paired_difference
from evomerge.zoo.real import DEFAULT_DIR, SPECIALTIES, build_real_zoo, write_real_recipe

SEARCHERS = {
    "cma": {"name": "cma"},  # the default searcher with its defaults
    "random": {"name": "random"},
    "tpe": {"name": "optuna", "sampler": "tpe", "batch": 4},
    "ga": {"name": "ga", "population": 8, "elitism": 2, "steady": True},
}
START = {"plateau": {"rev": 0.2, "sort": 1.1}, "uniform": 1.0, "poor": 0.2}  # the grid's best region; its worst
RANGE = [0.0, 1.5]
GRID = [0.2, 0.5, 0.8, 1.1, 1.4]
CROWNS = ("crown", "crown-score", "luckiest")


def _recipe(directory: Path, regime: str, limit: int, **evomerge) -> Path:
    build_real_zoo(DEFAULT_DIR)
    evomerge.setdefault("search", [{"parameter": "weight", "range": RANGE, "layer_groups": 2}])
    return write_real_recipe(directory, DEFAULT_DIR, name=f"{regime}.yaml", weight=START.get(regime, 1.0),
                             eval={"batch_size": 16, "limit": limit}, **evomerge)


class HeldOut:
    """The report tasks built once; a model scored document by document on all their documents."""

    def __init__(self, recipe_path: Path, per_task: int):
        recipe = load_recipe(recipe_path)
        self.suite = TaskSuite(recipe.spec.report_tasks, recipe.task_paths(), options=recipe.spec.eval,
                               seed=recipe.spec.seed)
        self.documents = {task: list(range(min(self.suite.documents(task), per_task))) for task in self.suite.names}
        self.terms = [(task, "acc", 1 / len(self.suite.names), 1.0) for task in self.suite.names]

    def scores(self, materializer: Materializer) -> Dict[str, Dict[str, List[float]]]:
        found = LMEvalScorer(self.suite, materializer.model, materializer.tokenizer).score_documents(self.documents)
        return {task: {"acc": values["acc"]} for task, values in found.items()}

    def mean(self, scores) -> float:
        return float(sum(np.mean(scores[t]["acc"]) for t in self.suite.names) / len(self.suite.names))


def run(args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"evomerge-quality-{args.regime}-"))
    start_recipe = _recipe(work, args.regime, args.limit)
    held_out = HeldOut(start_recipe, args.held_out)
    space = build_space(load_recipe(start_recipe))
    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True))
    cache: Dict[tuple, dict] = {}

    def score(genotype) -> dict:
        key = tuple(np.round(np.asarray(genotype, dtype=float), 12))
        if key not in cache:
            materializer.materialize(space.decode(np.asarray(genotype, dtype=float)))
            cache[key] = held_out.scores(materializer)
        return cache[key]

    start_scores = score(space.x0)
    results = {"regime": args.regime, "start_weight": START[args.regime], "limit": args.limit,
               "start": start_scores, "runs": []}
    for config in args.configs:
        for seed in range(args.seeds):
            recipe_path = _recipe(work, args.regime, args.limit, searcher=SEARCHERS[config],
                                  budget={"evaluations": max(args.evaluations)})
            began = time.time()
            search = start_search(recipe_path, work / f"{config}-{seed}", SearchOptions(seed=seed, quiet=True))
            search.run()
            finished = search.store.evaluations.finished()
            documents = confirmation_documents(search.recipe, search.confirmation, search.worker.suite,
                                               search.worker.objective, search.worker.split)
            for budget in args.evaluations:
                among = finished[:budget]
                crowns = {"luckiest": min((e for e in among if e.ok), key=lambda e: (-e.fitness, e.id)).id}
                for name, rank in (("crown-score", "score"), ("crown", "surrogate")):
                    spec = search.recipe.spec
                    recipe = dataclasses.replace(search.recipe, spec=spec.model_copy(update={
                        "confirm": spec.confirm.model_copy(update={"rank": rank})}))
                    crowns[name] = confirm_finalists(search.store, recipe, search.space,
                                                     search.worker.materializer, documents, quiet=True,
                                                     among=among)["winner"]
                row = {"config": config, "seed": seed, "budget": budget,
                       "seconds": among[-1].created - began, "crowns": {}}
                for name, winner in crowns.items():
                    evaluation = search.store.evaluations.get(winner)
                    row["crowns"][name] = {"id": winner, "genotype": evaluation.genotype,
                                           "kept_start": evaluation.operator == "start",
                                           "scores": score(evaluation.genotype)}
                results["runs"].append(row)
                print(f"# {args.regime} {config} seed {seed} budget {budget}: "
                      + ", ".join(f"{n} #{c['id']} {held_out.mean(c['scores']):.4f}" for n, c in row["crowns"].items()),
                      flush=True)
            search.store.close()
    Path(args.out).write_text(json.dumps(results) + "\n", encoding="utf-8")


def oracle(args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="evomerge-quality-oracle-"))
    recipe_path = _recipe(work, "plateau", args.limit)
    held_out = HeldOut(recipe_path, args.held_out)
    space = build_space(load_recipe(recipe_path))
    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True))
    names = [g["name"] for g in space.describe()]
    points = []
    for weights in ((a, b) for a in GRID for b in GRID):
        by_model = dict(zip(SPECIALTIES, weights))
        genotype = [next(w for model, w in by_model.items() if f"[{model}]" in name) for name in names]
        materializer.materialize(space.decode(np.asarray(genotype, dtype=float)))
        scores = held_out.scores(materializer)
        points.append({"weights": by_model, "scores": scores})
        print(f"# {by_model}: {held_out.mean(scores):.4f}", flush=True)
    parents = {}
    for reference in sorted(space.starting_point().merge.referenced_models(), key=str):
        materializer.load_parent(reference)
        parents[Path(reference.model.path).name] = held_out.mean(held_out.scores(materializer))
    Path(args.out).write_text(json.dumps({"grid": points, "parents": parents}) + "\n", encoding="utf-8")


def _paired(terms, a, b) -> Dict[str, float]:
    found = paired_difference(terms, a, b)
    return {"value": found.value, "stderr": found.stderr}


def table(args) -> None:
    loaded = [json.loads(Path(p).read_text()) for p in args.results]
    grid = next((r for r in loaded if "grid" in r), None)
    regimes = [r for r in loaded if "regime" in r]
    if not regimes:
        sys.exit("no `run` results given")
    suite_tasks = list(regimes[0]["start"])
    terms = [(task, "acc", 1 / len(suite_tasks), 1.0) for task in suite_tasks]

    def mean(scores) -> float:
        return float(sum(np.mean(scores[t]["acc"]) for t in suite_tasks) / len(suite_tasks))

    lines = []
    ceiling = None
    if grid:
        best = max(grid["grid"], key=lambda p: mean(p["scores"]))
        ceiling = best["scores"]
        weights = ", ".join(f"{m} {w}" for m, w in best["weights"].items())
        lines.append(f"Ceiling: the best of a {len(GRID)}×{len(GRID)} grid of global weights "
                     f"({GRID[0]} to {GRID[-1]}) scored held out is {weights}: {mean(ceiling):.4f}. Parents: "
                     + ", ".join(f"{n} {s:.4f}" for n, s in grid["parents"].items()) + ".")
        plateau = [p for p in grid["grid"] if mean(p["scores"]) >= mean(ceiling) - 0.03]
        lines.append(f"Grid points within 0.03 of it: {len(plateau)} of {len(grid['grid'])}.")
        lines.append("")
    lines.append("| regime (start held out) | searcher | crown | evaluations | held out (mean of seeds) | "
                 "vs start per seed (± s.e., paired) | start kept | target | vs ceiling per seed |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for regime in regimes:
        start = regime["start"]
        groups: Dict[tuple, list] = {}
        for row in regime["runs"]:
            for name in CROWNS:
                groups.setdefault((row["config"], name, row["budget"]), []).append(row["crowns"][name])
        for (config, name, budget), crowns in groups.items():
            gains = [_paired(terms, start, c["scores"]) for c in crowns]
            if regime["regime"] == "plateau":  # do no harm
                met = sum(g["value"] >= -g["stderr"] for g in gains)
                target = f"≥ −1 s.e.: {met} of {len(gains)}"
            else:  # earn its keep
                met = sum(g["value"] >= 2 * g["stderr"] > 0 for g in gains)
                near = (sum(_paired(terms, ceiling, c["scores"])["value"]
                            >= -2 * _paired(terms, ceiling, c["scores"])["stderr"] for c in crowns)
                        if ceiling else None)
                target = f"≥ +2 s.e.: {met} of {len(gains)}" + (f"; near ceiling {near}" if ceiling else "")
            versus = ", ".join(f"{p['value']:+.3f} ± {p['stderr']:.3f}" for p in
                               (_paired(terms, ceiling, c["scores"]) for c in crowns)) if ceiling else "n/a"
            weights = regime["start_weight"]
            weights = ", ".join(f"{m} {w}" for m, w in weights.items()) if isinstance(weights, dict) else weights
            lines.append(f"| {regime['regime']} (w {weights}: {mean(start):.4f}) | {config} | {name} | "
                         f"{budget} | {statistics.mean(mean(c['scores']) for c in crowns):.4f} | "
                         + ", ".join(f"{g['value']:+.3f} ± {g['stderr']:.3f}" for g in gains)
                         + f" | {sum(c['kept_start'] for c in crowns)} of {len(crowns)} | {target} | {versus} |")
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pages import write_table

        print(f"wrote {write_table('quality', text)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ran = commands.add_parser("run", help="searches of one regime, each crown scored held out")
    ran.add_argument("--regime", choices=sorted(START), required=True)
    ran.add_argument("--evaluations", type=int, nargs="+", default=[48, 96])
    ran.add_argument("--seeds", type=int, default=3)
    ran.add_argument("--configs", nargs="+", choices=sorted(SEARCHERS), default=["cma", "random"])
    for sub in (ran, commands.add_parser("oracle", help="the grid of global weights, scored held out")):
        sub.add_argument("--limit", type=int, default=24, help="documents per search task")
        sub.add_argument("--held-out", type=int, default=150, help="report documents per task")
        sub.add_argument("--threads", type=int, default=1, help="torch threads (one when anything else runs)")
        sub.add_argument("--out", required=True)
    shown = commands.add_parser("table", help="the Markdown table of the results")
    shown.add_argument("results", nargs="+")
    shown.add_argument("--write-docs", action="store_true", help="into docs/benchmarks/quality.md")
    args = parser.parse_args()
    {"run": run, "oracle": oracle, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
