"""The layered zoo: each specialist's weights differ from its base only in its own half of the layers."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from evomerge.zoo.layered import build_layered_zoo


def test_each_layered_specialist_learns_only_in_its_own_layers(zoo, tmp_path):
    manifest = build_layered_zoo(tmp_path / "layered", zoo["dir"] / "base", steps=3, score=False)
    base = load_file(zoo["dir"] / "base" / "model.safetensors")
    for entry in manifest["models"]:
        tensors = load_file(tmp_path / "layered" / entry["path"] / "model.safetensors")
        changed = {name for name, tensor in tensors.items() if not torch.equal(tensor, base[name])}
        own = {name for name in base if any(f".layers.{i}." in name for i in entry["layers"])}
        assert changed and changed <= own, f"{entry['name']} changed {sorted(changed - own)[:3]} outside its layers"
    assert [m["layers"] for m in manifest["models"]] == [[0, 1], [2, 3]]
    again = build_layered_zoo(tmp_path / "layered", zoo["dir"] / "base", steps=3, score=False)
    assert again == manifest  # reused, not retrained
