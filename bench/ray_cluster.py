"""A search on a Ray cluster of two nodes on this machine that loses its second node mid-run.

The cluster is made as a user makes one (tests/local_cluster.py): `ray start --head` with token
authentication on, `ray start --address` for the second node, one CPU each, so that each node
holds one of the two workers. `evomerge search --workers 2 --ray-address` runs on the demo recipe
from a shell without RAY_AUTH_MODE; once `--kill-after` evaluations are stored, the second node goes
down: its raylet, then its other processes, are killed with SIGKILL. Printed: each evaluation as stored (when, on which worker, attempts,
what was lost), whether the budget was stored in full with nothing redone, and the cluster's
processes left after it is shut down. Exits 1 if anything was lost or redone.

    python bench/ray_cluster.py [--evaluations 16] [--kill-after 2] [--limit 40]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.zoo.build import build_zoo
from evomerge.zoo.recipe import write_demo_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from local_cluster import local_cluster, stored  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=16)
    parser.add_argument("--kill-after", type=int, default=2)
    parser.add_argument("--limit", type=int, default=40, help="documents per task and candidate")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the search may take")
    args = parser.parse_args()
    build_zoo(DEFAULT_ZOO_DIR)
    folder = Path(tempfile.mkdtemp(prefix="evomerge-bench-ray-"))
    recipe = write_demo_recipe(folder, eval={"limit": args.limit}, searcher={"name": "random"}, confirm=None)
    run_dir = folder / "run"
    begun = time.monotonic()

    def say(text: str) -> None:
        print(f"{time.monotonic() - begun:6.1f} s  {text}", flush=True)

    with local_cluster([1, 1], folder) as cluster:
        say(f"cluster up at {cluster.address}: 2 nodes of 1 CPU, token authentication on, "
            f"driver's RAY_AUTH_MODE={cluster.env.get('RAY_AUTH_MODE', 'unset')}")
        search = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(recipe), "--out", str(run_dir),
                                   "--evaluations", str(args.evaluations), "--workers", "2", "--ray-address",
                                   cluster.address, "--quiet"], env=cluster.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        while len(stored(run_dir)) < args.kill_after and search.poll() is None:
            time.sleep(0.2)
        raylet = cluster.kill_node(1)
        before = stored(run_dir)
        say(f"{len(before)} evaluations stored; killed node 2: its raylet (pid {raylet}), then its other processes")
        try:
            code = search.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            say(f"the search had not ended {args.timeout:g} s after the kill; stopping it")
            search.kill()
            code = search.wait()
        say(f"search exited {code}; the cluster counts {cluster.alive()} active node(s)")
        for line in search.stderr.read().strip().splitlines()[-5:]:
            print(f"          stderr: {line}")
    left = cluster.processes()
    say(f"cluster shut down; its processes left: {sorted(left) or 'none'}")

    evaluations = stored(run_dir)
    for e in sorted(evaluations.values(), key=lambda e: e.created):
        lost = "; ".join(f"lost on {x['worker']}: {x['reason'][:70]}" for x in e.info.get("lost", []))
        print(f"  #{e.id} {e.status:6} {e.worker}  attempts {e.attempts}  "
              f"{'stored before the kill' if e.id in before else 'after'}  {lost}")
    complete = sorted(evaluations) == list(range(args.evaluations)) and all(e.ok for e in evaluations.values())
    redone = [i for i, e in before.items() if evaluations.get(i) is None or evaluations[i].created != e.created]
    retried = [e.id for e in evaluations.values() if e.info.get("lost")]
    print(f"budget stored in full: {complete}; redone: {redone or 'none'}; retried after the loss: {retried}")
    return 0 if code == 0 and complete and not redone and retried and not left else 1


if __name__ == "__main__":
    sys.exit(main())
