"""One Ray actor per device, each holding its own worker (resident parents, output model,
lm-eval tasks); the only module that imports Ray.

On a cluster with GPUs every actor takes one (`num_gpus=1`; Ray's CUDA_VISIBLE_DEVICES
makes it the actor's `cuda`); otherwise the CPUs are shared out and each actor's torch
threads set to its share. Without an address evomerge starts a local Ray and shuts it down
when the search ends (Ray's reaper ends it if the search is killed); with one it joins that
cluster and leaves it running.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from evomerge.errors import EvomergeError
from evomerge.run.pool import WorkerLost

Factory = Callable[..., Any]  # factory(threads=...) -> a worker


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EvomergeError("workers run on Ray, which is not installed: pip install 'evomerge[ray]'",
                            key="--workers") from None


class _Host:
    """The actor: builds the worker in its own process and runs the loop's calls on it."""

    def __init__(self, factory: Factory, threads: Optional[int]):
        self.worker, self.error = None, None
        try:
            self.worker = factory(threads=threads)
        except EvomergeError as error:
            self.error = error

    def call(self, method: str, *args: Any) -> Any:
        if self.worker is None:
            return self.error
        return getattr(self.worker, method)(*args)


class RayPool:
    def __init__(self, factory: Factory, size: int, *, address: Optional[str] = None, device: Optional[str] = None):
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1 and device != "cpu":
            self._resources, threads = {"num_gpus": 1, "num_cpus": 1}, None
        else:
            cpus = max(1, int(resources.get("CPU", 1)) // size)
            self._resources, threads = {"num_cpus": cpus}, cpus
        self._actor = ray.remote(_Host)
        self._factory, self._threads = factory, threads
        self.actors = [self._spawn() for _ in range(size)]
        self.names = [f"ray-{slot}" for slot in range(size)]
        self._calls: Dict[Any, int] = {}
        try:
            for found in ray.get([actor.call.remote("ready") for actor in self.actors]):
                if isinstance(found, Exception):
                    raise found
        except BaseException:
            self.close()
            raise

    def _spawn(self):
        return self._actor.options(**self._resources).remote(self._factory, self._threads)

    def submit(self, slot: int, method: str, *args: Any) -> None:
        self._calls[self.actors[slot].call.remote(method, *args)] = slot

    def wait(self) -> Tuple[int, Any]:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError, WorkerCrashedError

        [done], _ = ray.wait(list(self._calls), num_returns=1)
        slot = self._calls.pop(done)
        try:
            found = ray.get(done)
        except (RayActorError, OutOfMemoryError, WorkerCrashedError) as error:
            return slot, WorkerLost(f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
        if isinstance(found, EvomergeError):  # the worker could not start
            raise found
        return slot, found

    def restart(self, slot: int) -> None:
        """A new actor in the slot; its `ready` call answers once it has loaded."""
        import ray

        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._spawn()

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
            return
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self._calls.clear()
