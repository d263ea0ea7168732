"""Comparing weights: a folder's tensors with each other's, or with every tensor of a resident model."""

from __future__ import annotations

from typing import Mapping

import torch


def same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_as_resident(on_disk: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every tensor of the resident model equals its tensor on disk, tied ones included.

    transformers writes one of a tied pair (a tied lm_head is stored as embed_tokens), so a
    resident tensor missing on disk is compared with the stored tensor it is tied to (the same
    Parameter); one with neither is a failure, as is a tensor on disk the model does not have.
    """
    resident = model.state_dict(keep_vars=True)
    assert set(on_disk) <= set(resident), f"on disk only: {sorted(set(on_disk) - set(resident))[:3]}"
    stored_as = {id(tensor): name for name, tensor in resident.items() if name in on_disk}
    counterpart = {name: name if name in on_disk else stored_as.get(id(tensor)) for name, tensor in resident.items()}
    missing = [name for name, stored in counterpart.items() if stored is None]
    assert not missing, f"{len(missing)} resident tensors have no counterpart on disk, e.g. {missing[:3]}"
    different = [name for name, stored in counterpart.items()
                 if not torch.equal(resident[name].detach().cpu(), on_disk[stored])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
