"""What SQLite's synchronous=FULL costs a run, per evaluation, against NORMAL: the store's own writes
for one candidate (its pending row with the ask, running, its result with per-document scores,
fingerprint and tell, and the view files), on realistic rows, many times, in a fresh run directory each.

    python bench/store_sync.py [--evaluations 400] [--dir /path/on/the/disk/to/measure] [--write-docs]

--write-docs writes the table into docs/benchmarks/store-sync.md (bench/pages.py).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from pages import write_table

from evomerge.run.store import Evaluation, RunStore
from evomerge.run.store.schema import DATABASE


def one_run(directory: Path, synchronous: str, evaluations: int) -> float:
    """Milliseconds per evaluation of the store's writes."""
    store = RunStore.create(directory, {"recipe_text": "", "status": "new"})
    store.db.execute(f"PRAGMA synchronous={synchronous}")
    rng = random.Random(0)
    documents = {task: {"acc": [float(rng.random() < 0.5) for _ in range(100)]} for task in ("a", "b", "c", "d")}
    fingerprint = {f"model.layers.{i}.mlp.weight": f"{rng.getrandbits(64):016x}" for i in range(200)}
    recipe = "merge_method: task_arithmetic\n" + "".join(f"# weight {i}: {rng.random()}\n" for i in range(40))
    start = time.perf_counter()
    for index in range(evaluations):
        row = Evaluation(id=index, generation=index // 8, genotype=[rng.random() for _ in range(16)], recipe=recipe,
                         status="pending", parents=[max(index - 1, 0)], operator="cma")
        store.add_proposals([row])
        store.evaluations.mark_running(index, "local")
        done = Evaluation(**{**row.__dict__, "status": "ok", "fitness": rng.random(), "documents": 400,
                             "metrics": {task: {"acc": 0.5, "acc_stderr": 0.05} for task in documents}})
        store.add_result(done, documents, fingerprint)
    seconds = time.perf_counter() - start
    store.close()
    return 1000 * seconds / evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluations", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the run directories go (the disk measured)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks/store-sync.md")
    arguments = parser.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}; journal WAL; {arguments.evaluations} evaluations a run, "
          f"{arguments.repeats} runs each, alternating")
    found = {"NORMAL": [], "FULL": []}
    with tempfile.TemporaryDirectory(dir=arguments.dir) as root:
        for repeat in range(arguments.repeats):
            for synchronous in found:
                found[synchronous].append(one_run(Path(root) / f"{synchronous}-{repeat}", synchronous,
                                                  arguments.evaluations))
    for synchronous, values in found.items():
        print(f"{synchronous:>6}: {statistics.median(values):.3f} ms per evaluation (median of {len(values)}; "
              f"min {min(values):.3f}, max {max(values):.3f})")
    print(f"FULL costs {statistics.median(found['FULL']) - statistics.median(found['NORMAL']):.3f} ms more per "
          f"evaluation ({DATABASE} in {root})")
    if arguments.write_docs:
        rows = [f"| {synchronous} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} |"
                for synchronous, values in found.items()]
        table = (f"sqlite {sqlite3.sqlite_version}, WAL, {arguments.evaluations} evaluations a run, {arguments.repeats} "
                 "runs each\n\n| synchronous | ms per evaluation (median) | min–max |\n|---|---|---|\n" + "\n".join(rows))
        print(f"wrote {write_table('store-sync', table)}")


if __name__ == "__main__":
    main()
