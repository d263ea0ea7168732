"""One candidate of the zoo merged in memory vs by mergekit, timed side by side in one run.

Prints the time per candidate of: the materializer (full recompute, and after one gene
changed), mergekit's `run_merge` to a temporary folder (what mergekit-yaml runs, without
interpreter start-up), and the `mergekit-yaml` command itself.

    python bench/materialize_vs_mergekit.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from evomerge.merge.materializer import Materializer
from evomerge.merge.write import write_with_mergekit
from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run_options import RunOptions
from evomerge.zoo.build import build_zoo


def _timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    manifest = build_zoo(DEFAULT_ZOO_DIR)
    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    recipe = {
        "merge_method": "ties",
        "base_model": str(DEFAULT_ZOO_DIR / "base"),
        "models": [{"model": str(DEFAULT_ZOO_DIR / m["path"])} for m in manifest["models"] if m["skill"]],
        "dtype": "float32",
        "evomerge": {"search": [{"parameter": "weight", "range": [0, 1], "layer_groups": 4},
                                {"parameter": "density", "range": [0.2, 1.0]}]},
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    space = build_space(load_recipe(work / "recipe.yaml"))
    rng = np.random.default_rng(0)
    points = [space.decode(rng.uniform(space.lower, space.upper)) for _ in range(args.repeats)]
    candidate = points[0]
    (work / "candidate.yaml").write_text(candidate.to_yaml())

    materializer = Materializer(candidate.merge, options=RunOptions(quiet=True))
    cycle = iter(points * 2)
    full = _timed(lambda: materializer.materialize(next(cycle)), args.repeats)
    x = space.x0.copy()

    def one_gene_changed():
        x[0] = rng.uniform(0, 1)
        materializer.materialize(space.decode(x))

    materializer.materialize(space.decode(x))
    incremental = _timed(one_gene_changed, args.repeats)
    counter = iter(range(10**6))
    in_process = _timed(lambda: write_with_mergekit(candidate, work / f"run_merge-{next(counter)}"), args.repeats)
    mergekit_yaml = str(Path(sys.executable).parent / "mergekit-yaml")
    command = _timed(lambda: subprocess.run([mergekit_yaml, str(work / "candidate.yaml"), str(work / f"cli-{next(counter)}")],
                                            check=True, capture_output=True), args.repeats)

    print(f"zoo ties merge, {len(points[0].merge.models)} specialists + base, {space.dimension} genes; median of {args.repeats}")
    print(f"{'path':<40}{'seconds':>10}{'vs in-memory':>14}")
    for label, seconds in [("in memory, full recompute", full), ("in memory, one gene changed", incremental),
                           ("mergekit run_merge to a folder", in_process), ("mergekit-yaml command", command)]:
        print(f"{label:<40}{seconds:>10.4f}{seconds / full:>13.1f}x")


if __name__ == "__main__":
    main()
