"""The GPU steps of bench/gpu.sh, on whichever device is there (cuda when available).

    python bench/gpu.py search --out RUN [--evaluations 16] [--parents host]
                                                    the demo search on the zoo: per-candidate merge and
                                                    scoring times, peak device memory
    python bench/gpu.py same FOLDER FOLDER          whether two model folders hold identical tensors
    python bench/gpu.py plan RECIPE                 `evomerge plan`'s estimate for RECIPE against the peak
                                                    measured while one candidate is merged and scored
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.merge.materializer import default_device
from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions
from evomerge.zoo.recipe import write_demo_recipe


def search(run: Path, evaluations: int, parents: str) -> None:
    device = default_device()
    run.parent.mkdir(parents=True, exist_ok=True)
    recipe = write_demo_recipe(run.parent, DEFAULT_ZOO_DIR, parents=parents)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = start_search(recipe, run, SearchOptions(device=device, evaluations=evaluations, quiet=True)).run()
    finished = RunStore.open(run).evaluations.finished()
    print(f"search on {device} (parents: {parents}): {len(finished)} evaluations, "
          f"{sum(e.failed for e in finished)} failed, "
          f"best fitness {best.fitness:.4f} (#{best.id})")
    print("candidate  merge s  scoring s  status")
    for e in finished:
        print(f"{e.id:>9}  {e.materialize_seconds or 0:7.3f}  {e.evaluate_seconds or 0:9.3f}  {e.status}")
    merge = [e.materialize_seconds for e in finished if e.materialize_seconds is not None]
    scoring = [e.evaluate_seconds for e in finished if e.evaluate_seconds is not None]
    print(f"median     {statistics.median(merge):7.3f}  {statistics.median(scoring):9.3f}  (the first candidate "
          "merges every tensor and warms lm-eval up)")
    if device == "cuda":
        print(f"peak device memory (torch.cuda.max_memory_allocated): "
              f"{torch.cuda.max_memory_allocated() / 2 ** 20:.1f} MiB")
    else:
        print("peak device memory: skipped, no CUDA device here")


def plan(recipe_path: Path) -> None:
    """The estimate of the memory the recipe's parents mode needs on the device against the measured peak:
    torch's peak allocation on CUDA; on a CPU, where device and host are one memory, the process's peak
    resident size over what it held before anything loaded (the tasks are built first, as the plan counts
    only weights and activations)."""
    import resource

    from evomerge.recipe.loading import load_recipe
    from evomerge.run.memory_plan import gib, make_plan
    from evomerge.run.worker import Worker

    device = default_device()
    recipe = load_recipe(recipe_path)
    estimate = make_plan(recipe, device=device)
    for line in estimate.lines():
        print(line)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    worker = Worker(recipe, RunOptions(device=device))
    step = worker.begin(worker.space.x0.tolist())
    while step.outcome is None:  # racing stages
        step = worker.advance()
    status = step.outcome.status
    measured = (torch.cuda.max_memory_allocated() if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    predicted = estimate.device_bytes(recipe.spec.parents)
    print(f"one candidate merged and scored ({status}) on {device}: measured peak {gib(measured)}, "
          f"estimated {gib(predicted)}: estimate / measured = {predicted / measured:.2f}")


def same(first: Path, second: Path) -> None:
    a, b = (load_file(folder / "model.safetensors") for folder in (first, second))
    different = sorted(name for name in a.keys() & b.keys() if not torch.equal(a[name], b[name]))
    only = sorted(a.keys() ^ b.keys())
    if different or only:
        print(f"parity FAILED: {len(different)} tensors differ (e.g. {different[:2]}), {len(only)} in one folder only")
        sys.exit(1)
    print(f"parity: all {len(a)} tensors identical")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    searching = commands.add_parser("search")
    searching.add_argument("--out", type=Path, required=True, help="A new run directory.")
    searching.add_argument("--evaluations", type=int, default=16)
    searching.add_argument("--parents", choices=["device", "host"], default="device",
                           help="Where the parents are kept (the recipe's `parents:`).")
    compare = commands.add_parser("same")
    compare.add_argument("folders", type=Path, nargs=2)
    planning = commands.add_parser("plan")
    planning.add_argument("recipe", type=Path)
    args = parser.parse_args()
    if args.command == "search":
        search(args.out, args.evaluations, args.parents)
    elif args.command == "same":
        same(*args.folders)
    else:
        plan(args.recipe)
