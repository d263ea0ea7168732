"""One Ray actor per device, each holding its own worker (resident parents, output model,
lm-eval tasks); the only module that imports Ray.

On a cluster with GPUs every actor takes `gpus_per_worker` of one (default 1; a fraction lets
small-model workers share a GPU; Ray's CUDA_VISIBLE_DEVICES makes it the actor's `cuda`);
otherwise the CPUs are shared out and each actor's torch threads set to its share. The actors
are placed together in one placement group: a cluster that cannot hold them is refused in one
line, at once when its totals fall short, after `placement_timeout` seconds when they do not fit
on its nodes, instead of waiting forever. Without an address evomerge starts a local Ray and shuts
it down when the search ends (Ray's reaper ends it if the search is killed); with one it joins
that cluster (with this machine's Ray token when the cluster asks for one) and leaves it running.
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
def _stderr_to_null() -> Iterator[None]:
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _authenticate(address: str) -> None:
    """Send this machine's Ray token to a cluster that asks for one, or refuse in one line.

    `ray start --head` turns Ray's token authentication on when its machine has a token
    (~/.ray/auth_token, which any local `ray.init()` writes), but a driver given an address sends
    one only under RAY_AUTH_MODE=token: without it Ray retries for 20 s and ends in a traceback.
    So the cluster is asked first (a probe answered at once); one that refuses a driver without a
    token gets the token Ray finds here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), as Ray itself does for a
    cluster it finds without an address. Never the other way round: the workers of a cluster
    without authentication cannot answer a driver that asks them for a token."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, GcsClient, get_authentication_mode
        from ray.exceptions import AuthenticationError, RpcError
    except ImportError:  # a Ray before token authentication
        return

    def refused() -> bool:
        try:
            with _stderr_to_null():  # Ray's C++ client logs each refusal there; the answer is told in one line
                GcsClient(address=address)
        except AuthenticationError:
            return True
        except RpcError as error:
            raise EvomergeError(f"no Ray cluster answers at {address} ({error.message}): check the address that "
                                "`ray start --head` printed", key="--ray-address") from None
        return False

    has_token = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    if not refused():
        return
    if os.environ.get("RAY_AUTH_MODE") is None and has_token:
        _enable_token_auth()  # RAY_AUTH_MODE=token, for this process and the ones it starts
        if not refused():
            return
    head = "`ray get-auth-token` prints on its head node"
    if get_authentication_mode() == AuthenticationMode.TOKEN and has_token:
        raise EvomergeError(f"the Ray cluster at {address} refused this machine's Ray token: set RAY_AUTH_TOKEN to "
                            f"the one {head}", key="--ray-address")
    raise EvomergeError(f"the Ray cluster at {address} asks for a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                        f"to the one {head}", key="--ray-address")


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
                    _authenticate(address)
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
