"""A Ray cluster of several nodes on this machine, made as `ray start` makes one, for the tests and
bench/ray_cluster.py; and a run's evaluations read while a search on it runs.

Token authentication is on, as `ray start --head` turns it on when its machine has a token: the
nodes read one token file (RAY_AUTH_TOKEN_PATH stands for ~/.ray/auth_token, which is left alone).
`env` is what a user's shell holds, RAY_AUTH_MODE unset; Ray asks RAY_AUTH_MODE=token of a node
that joins with `--address`, and of `ray status`. Each node is a `ray start --block` in its own
session with its own temp dir, so the cluster's processes are found and ended without touching any
other Ray on the machine (`ray stop` would end them all).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set

from evomerge.errors import EvomergeError
from evomerge.run.store import Evaluation, RunStore

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Cluster:
    address: str
    env: Dict[str, str]  # a user's: a token file, RAY_AUTH_MODE unset
    nodes: List[subprocess.Popen] = field(default_factory=list)  # the head first
    temp_dirs: List[str] = field(default_factory=list)

    @property
    def node_env(self) -> Dict[str, str]:
        return {**self.env, "RAY_AUTH_MODE": "token"}

    def start_node(self, cpus: int) -> None:
        temp_dir = tempfile.mkdtemp(prefix="evomerge-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
        where = ["--head", "--port", self.address.split(":")[1]] if not self.nodes else ["--address", self.address]
        self.nodes.append(subprocess.Popen(
            [RAY, "start", *where, "--block", "--num-cpus", str(cpus), "--temp-dir", temp_dir,
             "--disable-usage-stats", *(["--include-dashboard", "false"] if not self.nodes else [])],
            env=self.env if not self.nodes else self.node_env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.temp_dirs.append(temp_dir)

    def alive(self) -> int:
        """How many nodes the cluster counts as active (0 while its head is not up)."""
        status = subprocess.run([RAY, "status", "--address", self.address], env=self.node_env,
                                capture_output=True, text=True)
        if status.returncode or "Active:" not in status.stdout:
            return 0
        return status.stdout.split("Active:")[1].split("Pending:")[0].count(" node_")

    def processes(self, node: int = None) -> Set[int]:
        """The pids of the cluster's processes (of one node): in a node's session, or naming its temp dir."""
        nodes = range(len(self.nodes)) if node is None else [node]
        sessions = {self.nodes[n].pid for n in nodes}
        dirs = [self.temp_dirs[n] + "/" for n in nodes]
        found = subprocess.run(["ps", "-ww", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
        return {int(pid) for pid, sid, args in (line.split(None, 2) for line in found.splitlines())
                if int(sid) in sessions or any(d in args for d in dirs)}

    def kill_node(self, node: int) -> int:
        """SIGKILL a node as a machine that goes down: its raylet, then every other process of it (a raylet
        killed alone leaves its workers answering the driver until the head gives the node up, 10-30 s
        later); the raylet's pid."""
        found = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-p", ",".join(map(str, self.processes(node)))],
                               capture_output=True, text=True).stdout
        [raylet] = [int(line.split()[0]) for line in found.splitlines() if line.split()[1].endswith("/raylet")]
        os.kill(raylet, signal.SIGKILL)
        for pid in self.processes(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return raylet


@contextlib.contextmanager
def local_cluster(cpus: Sequence[int], folder: Path, seconds: float = 180) -> Iterator[Cluster]:
    """A head with `cpus[0]` CPUs and a node for each further entry, all up; every process ended after."""
    token = Path(folder) / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = Cluster(f"127.0.0.1:{port}", {**env, "RAY_AUTH_TOKEN_PATH": str(token)})
    try:
        deadline = time.monotonic() + seconds
        for count, node_cpus in enumerate(cpus, start=1):
            cluster.start_node(node_cpus)
            while cluster.alive() < count:
                assert time.monotonic() < deadline and all(node.poll() is None for node in cluster.nodes), \
                    f"the Ray cluster did not reach {count} nodes"
                time.sleep(1)
        yield cluster
    finally:
        for node in cluster.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        deadline = time.monotonic() + 60
        while cluster.processes() and time.monotonic() < deadline:  # until the killed are reaped too
            for pid in cluster.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for temp_dir in cluster.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def stored(run_dir: Path) -> Dict[int, Evaluation]:
    """A run's finished evaluations by id, read beside the search that runs it; {} before its store exists."""
    try:
        store = RunStore.open(run_dir)
    except EvomergeError:
        return {}
    try:
        return {e.id: e for e in store.evaluations.finished()}
    finally:
        store.close()
