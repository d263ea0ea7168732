"""Host-resident parents' inputs reach the device one tensor ahead of their merge."""

import torch

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
