"""Weight-space mutation noise, identical in memory and on disk.

Each tensor gets Gaussian noise with std = value × the tensor's own std, where the value
follows an N-point gradient across the layers exactly as a mergekit parameter would
(non-layer tensors take the first point, as mergekit's planner gives them t = 0). The
noise is drawn on the tensor's own device from a generator seeded by (seed, tensor name),
so it does not depend on the order the tensors are written in, and nothing leaves the
device. The same seed gives the same noise on the same kind of device: the CPU's
generator is not CUDA's, so a folder written on the CPU matches a CPU search.
"""

from __future__ import annotations

import zlib
from typing import Dict, Sequence

import torch
from mergekit.architecture import ConfiguredModuleArchitecture, ModelArchitecture
from mergekit.config import evaluate_setting


def layer_positions(arch: ModelArchitecture, out_config) -> Dict[str, float]:
    """Tensor name -> gradient position t in [0, 1], as mergekit's planner assigns it."""
    positions: Dict[str, float] = {}
    for module in arch.modules.values():
        configured = ConfiguredModuleArchitecture(info=module.architecture, config=out_config,
                                                  weight_prefix=module.weight_prefix)
        layers = configured.num_layers()
        for weight in configured.pre_weights() + configured.post_weights():
            positions[weight.name] = 0.0
        for index in range(layers):
            for weight in configured.layer_weights(index):
                positions[weight.name] = index / (layers - 1) if layers > 1 else 1.0
    return positions


def relative_std(noise: Sequence[float], position: float) -> float:
    return float(evaluate_setting("", list(noise), position, validate=float))


def add_noise(tensor: torch.Tensor, name: str, scale: float, seed: int) -> torch.Tensor:
    """`tensor` plus N(0, (scale · std(tensor))²), reproducible from (seed, name)."""
    if scale == 0 or not tensor.is_floating_point() or tensor.numel() < 2:
        return tensor
    generator = torch.Generator(device=tensor.device)
    generator.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    work = tensor.detach().to(torch.float32)
    draw = torch.randn(work.shape, generator=generator, device=work.device)
    return (work + scale * work.std() * draw).to(tensor.dtype)
