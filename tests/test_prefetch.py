"""Host-resident parents' inputs reach the device one tensor ahead of their merge."""

import torch

from evomerge.merge.apply import Work
from evomerge.merge.apply import on_device as on_device_work
from evomerge.merge.prefetch import prefetched


def test_the_next_tensors_inputs_are_on_their_way_while_the_current_one_merges():
    log = []

    def host_inputs():
        for name in ["embed", "layer.0", "head"]:
            log.append(f"copy {name}")
            yield name, {"base": torch.full((3,), float(len(name))), "tuned": torch.arange(3.0)}

    merged = {}
    for name, inputs in prefetched(host_inputs(), torch.device("cpu")):
        log.append(f"merge {name}")
        merged[name] = inputs["base"] + inputs["tuned"]

    assert log == ["copy embed", "copy layer.0", "merge embed", "copy head", "merge layer.0", "merge head"]
    assert torch.equal(merged["layer.0"], torch.tensor([7.0, 8.0, 9.0]))


def test_nothing_to_merge_moves_nothing():
    assert list(prefetched([], torch.device("cpu"))) == []


def test_each_tensor_is_moved_or_not_by_where_its_own_inputs_are():
    """A multi-stage recipe with `parents: host`: the first tensor's inputs (an earlier stage's output) are on the
    device already, the next ones' on the host. ("meta" stands for a device this machine lacks.)"""
    device = torch.device("meta")
    on_device = {"stage": torch.zeros(3, device=device)}
    on_host = {"base": torch.zeros(3), "tuned": torch.ones(3)}
    work = [Work(name, task=None, inputs=inputs, dtype=None, noise=0.0)
            for name, inputs in [("embed", on_device), ("layer.0", on_host), ("head", on_host)]]

    ready = list(on_device_work(work, device))

    assert [item.name for item in ready] == ["embed", "layer.0", "head"]
    assert ready[0] is work[0]  # nothing to move: passed as it is
    assert all(tensor.device == device for item in ready for tensor in item.inputs.values())
