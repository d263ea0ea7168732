"""One Ray actor per device, each holding its own worker (resident parents, output model,
lm-eval tasks); the only module that imports Ray.

On a cluster with GPUs every actor takes `gpus_per_worker` of one (default 1; a fraction lets
small-model workers share a GPU; Ray's CUDA_VISIBLE_DEVICES makes it the actor's `cuda`);
otherwise the CPUs are shared out and each actor's torch threads set to its share. The actors
are placed together in one placement group: a cluster that cannot hold them is refused in one
line, at once when its totals fall short, after `placement_timeout` seconds when they do not fit
on its nodes, instead of waiting forever. Without an address evomerge starts a local Ray and shuts
it down when the search ends (Ray's reaper ends it if the search is killed); with one it joins
that cluster and leaves it running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

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


def worker_share(resources: Dict[str, float], size: int, device: Optional[str],
                 gpus_per_worker: Optional[float]) -> Dict[str, float]:
    """What one of `size` actors asks of a cluster with these total resources ({"CPU": .., "GPU": ..}),
    or a one-line refusal when the cluster cannot hold them all."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    has = f"the cluster has {gpus:g} GPUs and {cpus:g} CPUs"
    if gpus_per_worker and device == "cpu":
        raise EvomergeError("--gpus-per-worker asks for GPUs but --device is cpu", key="--gpus-per-worker")
    if device != "cpu" and (gpus_per_worker or gpus >= 1):
        share = {"CPU": 1.0, "GPU": gpus_per_worker or 1.0}
        if size * share["GPU"] > gpus or size > cpus:
            raise EvomergeError(f"--workers {size} with --gpus-per-worker {share['GPU']:g} needs "
                                f"{size * share['GPU']:g} GPUs and {size} CPUs; {has}: ask for fewer workers or "
                                "a smaller --gpus-per-worker", key="--workers")
        return share
    if size > cpus:
        raise EvomergeError(f"--workers {size} needs a CPU each; {has}: ask for at most {cpus:g} workers",
                            key="--workers")
    return {"CPU": float(int(cpus) // size)}


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """`ray.init` replaces the process's SIGTERM handler with one that exits; the process keeps its own
    (the search's, which stops cleanly). Left in place, Ray's would also run in every process forked
    later, such as lm-eval's bootstrap pool, whose workers then hang instead of ending when terminated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, kept)


class RayPool:
    def __init__(self, factory: Factory, size: int, *, address: Optional[str] = None, device: Optional[str] = None,
                 gpus_per_worker: Optional[float] = None, placement_timeout: float = 120.0):
        import ray
        from ray.util.placement_group import placement_group

        self.started = not ray.is_initialized()
        if self.started:
            with _signal_handlers_kept():
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self.actors, self._group = [], None
        self._calls: Dict[Any, int] = {}
        try:
            share = worker_share(ray.cluster_resources(), size, device, gpus_per_worker)
            self._group = placement_group([share] * size, strategy="PACK")
            if not ray.wait([self._group.ready()], timeout=placement_timeout)[0]:
                raise EvomergeError(f"Ray could not place {size} workers of {share} each in {placement_timeout:g} s; "
                                    f"the cluster has {ray.available_resources()} free: ask for fewer --workers or "
                                    "a smaller --gpus-per-worker", key="--workers")
            self._resources = {"num_cpus": share["CPU"], "num_gpus": share.get("GPU", 0)}
            self._actor = ray.remote(_Host)
            self._factory, self._threads = factory, None if "GPU" in share else int(share["CPU"])
            self.actors = [self._spawn(slot) for slot in range(size)]
            self.names = [f"ray-{slot}" for slot in range(size)]
            for found in ray.get([actor.call.remote("ready") for actor in self.actors]):
                if isinstance(found, Exception):
                    raise found
        except BaseException:
            self.close()
            raise

    def _spawn(self, slot: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=slot)
        return self._actor.options(**self._resources, scheduling_strategy=strategy).remote(self._factory,
                                                                                          self._threads)

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
        self.actors[slot] = self._spawn(slot)

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
            return
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
        self._calls.clear()
