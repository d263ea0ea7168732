"""Searchers compared on the demo problem: for each searcher and seed, how many
evaluations it needs to reach 95% of the best fitness any run found, its best search
fitness, and its winner's mean score on the report tasks (which no search sees).

    python bench/searchers.py [--seeds 3] [--evaluations 64] [--only ga-succession ...]
                              [--llm-model recipes/zoo-real/base] [--threads 1]

With --problem routing, the rows are the layered zoo (evomerge/zoo/layered.py: `pair` learnt in the
lower layers of one specialist, `rev` in the upper layers of another) searched in parameter space
(PS: task arithmetic, a weight per specialist and layer half) and in data-flow space (DFS: a route
over both specialists' layers, twice over, with scales) and in both at once (PS+DFS: the task
arithmetic merge as a first stage, then a route over its layers and both specialists'), at the same
budget, scored on the report split of both skills.

With --llm-model, the `llm` searcher runs too, against that model behind the test tools'
OpenAI-compatible endpoint on 127.0.0.1 (tests/fake_llm.py), and the share of its proposals
that were usable is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from evomerge.outputs.finish import finish_run
from evomerge.paths import DEFAULT_ZOO_DIR, TASKS_DIR
from evomerge.run.start import SearchOptions, start_search
from evomerge.zoo.build import build_zoo
from evomerge.zoo.layered import build_layered_zoo
from evomerge.zoo.recipe import write_demo_recipe

SEARCHERS = {
    "cma": {"name": "cma", "popsize": 8},
    "ga": {"name": "ga", "population": 8, "elitism": 2},
    "ga-differential": {"name": "ga", "population": 8, "differential": {"f": 0.5, "cr": 0.5}},
    "ga-succession": {"name": "ga", "population": 8, "elitism": 2, "succession": {"step": 0.5, "decay": 0.95}},
    "optuna-tpe": {"name": "optuna", "sampler": "tpe", "batch": 8},
    "random": {"name": "random", "batch": 8},
}
LAYERED_DIR = DEFAULT_ZOO_DIR.with_name("zoo-layered")
ROUTING = {  # the same searchers over the three spaces
    "PS cma": ("ps", {"name": "cma", "popsize": 8}),
    "DFS cma": ("dfs", {"name": "cma", "popsize": 8}),
    "DFS ga-split": ("dfs", {"name": "ga", "population": 8, "elitism": 2, "crossover": "split"}),
    "PS+DFS cma": ("psdfs", {"name": "cma", "popsize": 8}),
    "PS+DFS ga-split": ("psdfs", {"name": "ga", "population": 8, "elitism": 2, "crossover": "split"}),
}


def write_routing_recipe(directory: Path, name: str, space: str, searcher: dict, seed: int) -> Path:
    """The layered-zoo problem, searched in parameter space (`ps`), as a route (`dfs`) or as a route over
    the parameter merge (a first stage, `ps`) and both specialists (`psdfs`)."""
    low, high = str(LAYERED_DIR / "pair-low"), str(LAYERED_DIR / "rev-high")
    section = {
        "seed": seed, "searcher": searcher, "task_paths": [str(TASKS_DIR)], "eval": {"limit": 60},
        "tasks": [{"name": "zoo_pair_search", "weight": 0.5}, {"name": "zoo_rev_search", "weight": 0.5}],
        "report_tasks": ["zoo_pair_report", "zoo_rev_report"],
    }
    weights = {"parameter": "weight", "range": [0.0, 1.5], "layer_groups": 2}
    ps = {"merge_method": "task_arithmetic", "base_model": str(DEFAULT_ZOO_DIR / "base"),
          "models": [{"model": m, "parameters": {"weight": 0.5}} for m in (low, high)], "dtype": "float32"}
    if space == "ps":
        documents = [ps | {"evomerge": section | {"search": [weights]}}]
    elif space == "dfs":
        documents = [{"merge_method": "passthrough", "models": [{"model": low}], "dtype": "float32",
                      "evomerge": section | {"search": [{"routing": {"models": [low, high], "repeats": 2,
                                                                     "max_layers": 8, "scale": [0.5, 1.5]}}]}}]
    else:  # the route starts as the merge's own layers
        routing = {"models": ["ps", low, high], "max_layers": 8, "scale": [0.5, 1.5]}
        route = {"merge_method": "passthrough", "models": [{"model": "ps"}], "dtype": "float32",
                 "evomerge": section | {"search": [weights | {"stage": "ps"}, {"routing": routing}]}}
        documents = [{"name": "ps"} | ps, route]
    path = directory / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=64)
    parser.add_argument("--only", nargs="+", help="run only these rows")
    parser.add_argument("--llm-model", help="a model folder to serve for the llm searcher")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--problem", choices=["demo", "routing"], default="demo")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    build_zoo(DEFAULT_ZOO_DIR)
    if args.problem == "routing":
        build_layered_zoo(LAYERED_DIR, DEFAULT_ZOO_DIR / "base")
        _compare({k: v for k, v in ROUTING.items() if not args.only or k in args.only}, args)
        return
    with contextlib.ExitStack() as stack:
        searchers = dict(SEARCHERS)
        if args.llm_model:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from fake_llm import FakeLLM, LocalModel, serve

            url = stack.enter_context(serve(FakeLLM(default=LocalModel(args.llm_model))))
            searchers["llm"] = {"name": "llm", "endpoint": url, "model": "local", "batch": 8, "timeout": 900,
                                "retries": 0, "token_budget": 1500}
        _compare({k: v for k, v in searchers.items() if not args.only or k in args.only}, args)


def _compare(searchers: dict, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="evomerge-searchers-"))
    runs = []
    for label, searcher in searchers.items():
        for seed in range(args.seeds):
            name = f"{label.replace(' ', '-')}-{seed}.yaml"
            recipe = (write_routing_recipe(work, name, *searcher, seed) if args.problem == "routing"
                      else write_demo_recipe(work, name=name, searcher=searcher, seed=seed))
            search = start_search(recipe, work / f"run-{label.replace(' ', '-')}-{seed}",
                                  SearchOptions(evaluations=args.evaluations, quiet=True))
            search.run()
            report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
            fitness = [e.fitness if e.ok else float("-inf") for e in search.store.evaluations.finished()]
            best_so_far = [max(fitness[: i + 1]) for i in range(len(fitness))]
            winner = next(r for r in report["rows"] if r["role"] == "winner")
            runs.append({"searcher": label, "seed": seed, "curve": best_so_far, "report": winner["mean"]})
            answers = getattr(search.searcher, "answers", None)
            usable = (f", usable LLM proposals {answers['usable'] + answers['repaired']} of "
                      f"{answers['usable'] + answers['repaired'] + answers['fallback']} ({answers['repaired']} repaired)"
                      if answers else "")
            print(f"  {label} seed {seed}: best {best_so_far[-1]:.4f}, report {winner['mean']:.4f}{usable}; "
                  + "; ".join(_row(r) for r in report["rows"]), flush=True)
    target = 0.95 * max(r["curve"][-1] for r in runs)
    for run in runs:
        run["to_target"] = next((i + 1 for i, f in enumerate(run["curve"]) if f >= target), None)

    print(f"\n{args.problem} problem ({args.evaluations} evaluations per run); target = 95% of the best fitness found = {target:.4f}")
    print(f"{'searcher':<16}{'seed':>5}{'evals to target':>17}{'best fitness':>14}{'report mean':>13}")
    for run in runs:
        reached = run["to_target"] if run["to_target"] is not None else f">{args.evaluations}"
        print(f"{run['searcher']:<16}{run['seed']:>5}{reached:>17}{run['curve'][-1]:>14.4f}{run['report']:>13.4f}")
    print(f"\n{'median over seeds':<21}{'evals to target':>17}{'best fitness':>14}{'report mean':>13}")
    for label in searchers:
        mine = [r for r in runs if r["searcher"] == label]
        reached = statistics.median(r["to_target"] or args.evaluations + 1 for r in mine)
        print(f"{label:<21}{reached:>17g}{statistics.median(r['curve'][-1] for r in mine):>14.4f}"
              f"{statistics.median(r['report'] for r in mine):>13.4f}")


def _row(row: dict) -> str:
    """A report row: its mean and each report task's score."""
    scores = ", ".join(f"{task} {score['value']:.3f}" for task, score in row["scores"].items())
    return f"{row['name']} {row['mean']:.3f} ({scores})"


if __name__ == "__main__":
    main()
