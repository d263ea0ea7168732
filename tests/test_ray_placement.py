"""Workers the cluster cannot hold are refused in one line naming --workers, --gpus-per-worker and
what the cluster has, instead of waiting forever for Ray to place them."""

from __future__ import annotations

import signal

import pytest

from evomerge.errors import EvomergeError
from evomerge.run.ray_pool import worker_share


def test_gpu_shares_fractions_and_cpu_shares_are_what_the_cluster_holds():
    assert worker_share({"CPU": 8, "GPU": 2}, 2, None, None) == {"CPU": 1, "GPU": 1}
    assert worker_share({"CPU": 8, "GPU": 1}, 2, None, 0.5) == {"CPU": 1, "GPU": 0.5}  # two workers a GPU
    assert worker_share({"CPU": 8, "GPU": 2}, 2, "cpu", None) == {"CPU": 4}
    assert worker_share({"CPU": 5}, 2, None, None) == {"CPU": 2}
    with pytest.raises(EvomergeError, match=r"^--workers: --workers 2 with --gpus-per-worker 1 needs 2 GPUs and 2 CPUs; "
                                            r"the cluster has 1 GPUs and 8 CPUs"):
        worker_share({"CPU": 8, "GPU": 1}, 2, None, None)
    with pytest.raises(EvomergeError, match="--gpus-per-worker asks for GPUs but --device is cpu"):
        worker_share({"CPU": 8, "GPU": 1}, 1, "cpu", 0.5)


@pytest.mark.slow
def test_a_local_cpu_cluster_refuses_more_workers_or_gpus_than_it_has_at_once():
    ray = pytest.importorskip("ray")
    from evomerge.run.ray_pool import RayPool

    def never_built(threads=None):
        raise AssertionError("no worker should start")

    handler = signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(EvomergeError) as cpus:
            RayPool(never_built, 3)
        assert str(cpus.value) == "--workers: --workers 3 needs a CPU each; the cluster has 0 GPUs and 2 CPUs: ask " \
                                  "for at most 2 workers"
        with pytest.raises(EvomergeError) as gpus:
            RayPool(never_built, 1, gpus_per_worker=1)
        assert str(gpus.value).startswith("--workers: --workers 1 with --gpus-per-worker 1 needs 1 GPUs and 1 CPUs; "
                                          "the cluster has 0 GPUs and 2 CPUs")
        _occupy_every_cpu(ray)
        with pytest.raises(EvomergeError, match=r"Ray could not place 1 workers of .* in 2 s"):
            RayPool(never_built, 1, placement_timeout=2)
        assert ray.is_initialized()  # a cluster evomerge joined is left running
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, handler)  # ray.init's own exits the process, even a later fork's


@pytest.mark.slow
def test_a_ray_evomerge_starts_leaves_the_processs_sigterm_handler_as_it_was():
    """Ray's handler (exit on SIGTERM) would also run in processes forked later, such as lm-eval's
    bootstrap pool, whose terminated workers then hang instead of ending."""
    pytest.importorskip("ray")
    from evomerge.run.ray_pool import RayPool

    def never_built(threads=None):
        raise AssertionError("no worker should start")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(EvomergeError, match="needs a CPU each"):
        RayPool(never_built, 64)  # starts a local Ray, is refused, shuts it down
    assert signal.getsignal(signal.SIGTERM) is before


def _occupy_every_cpu(ray) -> None:
    """Take both CPUs of the cluster, so its totals allow a worker but nothing is free to place it."""
    from ray.util.placement_group import placement_group

    ray.get(placement_group([{"CPU": 2}]).ready(), timeout=60)
