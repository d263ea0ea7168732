"""A family tree of models from their weights, and where in the layers they differ.

Distance. For two models i and j and each tensor t,
    d_t(i, j) = ||W_i,t - W_j,t||² / mean_m ||W_m,t||²,
the squared L2 distance of the weights relative to the tensor's own size, and
d(i, j) = the mean of d_t over the tensors. Relative, so a large embedding matrix
counts no more than a layer norm; squared, because fine-tuning updates on different
branches are nearly orthogonal in millions of dimensions, so squared distances add up
along the path between two models (Pythagoras). Additive distances are what neighbor
joining needs to recover the true tree. A reference model changes nothing in these
distances (it cancels in W_i - W_j); it only says where the tree is rooted.

Memory. Tensors are streamed with safetensors, one tensor (in row blocks if needed) of
every model at a time, each file opened only for the read, so what is held is bounded by
`budget_bytes` (by default one model's float32 size, at most 256 MiB) plus one block of
one model, whatever the number of models.
The tree is Biopython's neighbor joining.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import safe_open

from evomerge.errors import EvomergeError

DEFAULT_BUDGET_BYTES = 256 * 2**20
KINDS = ("attention", "mlp", "other")  # "other": embeddings, output head and norms
_ATTENTION = re.compile(r"attn|attention")
_MLP = re.compile(r"mlp|feed_forward|ffn|expert")


@dataclass(frozen=True)
class ModelWeights:
    """Where one model's tensors are: tensor name -> (shard file, shape)."""

    name: str  # the leaf's name
    folder: Path
    tensors: Dict[str, Tuple[Path, Tuple[int, ...]]]

    @property
    def nbytes(self) -> int:
        return sum(4 * int(np.prod(shape)) for _, shape in self.tensors.values())

    def read(self, tensor: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor, flat and in its stored dtype (the whole tensor if it has no rows)."""
        shard, shape = self.tensors[tensor]
        with safe_open(shard, framework="pt") as handle:
            block = handle.get_slice(tensor)[start:stop] if shape else handle.get_tensor(tensor)
        return block.reshape(-1)


def _local_folder(reference: str) -> Path:
    """A local folder, or a Hub id downloaded by mergekit (config, tokenizer and safetensors only)."""
    folder = Path(reference).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise EvomergeError(f"expected a model folder, found a file: {folder}")
    if reference.count("/") != 1 or reference.startswith((".", "/", "~")):
        raise EvomergeError(f"model folder not found: {folder}")
    from mergekit.common import ModelReference

    try:
        return Path(ModelReference.model_validate(reference).local_path())
    except Exception as error:  # huggingface_hub raises many types for a missing or private repo
        raise EvomergeError(f"{reference} is not a local folder, and fetching it from the Hub failed: "
                            f"{' '.join(str(error).split())}") from None


def _index(name: str, folder: Path) -> ModelWeights:
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        detail = f" (only {pickles[0]}; convert it to safetensors)" if pickles else ""
        raise EvomergeError(f"no *.safetensors weights in {folder}{detail}")
    tensors = {}
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as handle:
                for tensor in handle.keys():
                    tensors[tensor] = (shard, tuple(handle.get_slice(tensor).get_shape()))
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise EvomergeError(f"unreadable safetensors file {shard} ({error})") from None
    return ModelWeights(name, folder, tensors)


def leaf_names(references: Sequence[str]) -> List[str]:
    """Each model's folder or Hub name; parent folders are added to names that would clash."""
    parts = [Path(r.rstrip("/")).parts or (r,) for r in references]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, name in enumerate(names) if names.count(name) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        raise EvomergeError(f"model {twice[0]} is given twice")
    return names


def open_models(references: Sequence[str]) -> List[ModelWeights]:
    """Index every model's safetensors headers and check they hold the same tensors and shapes."""
    if len(references) < 3:
        raise EvomergeError(f"expected at least three models for a tree, got {len(references)}")
    models = [_index(name, _local_folder(ref)) for name, ref in zip(leaf_names(references), references)]
    first = models[0]
    for other in models[1:]:
        for tensor in sorted(set(first.tensors) ^ set(other.tensors)):
            holder, lacking = (first, other) if tensor in first.tensors else (other, first)
            raise EvomergeError(f"models {first.name} and {other.name} differ: tensor {tensor} is in "
                                f"{holder.name} but not in {lacking.name}")
        for tensor in first.tensors:
            if first.tensors[tensor][1] != other.tensors[tensor][1]:
                raise EvomergeError(f"models {first.name} and {other.name} differ: tensor {tensor} has shape "
                                    f"{list(first.tensors[tensor][1])} in {first.name} but "
                                    f"{list(other.tensors[tensor][1])} in {other.name}")
    return models


def tensor_place(tensor: str) -> Tuple[Optional[int], str]:
    """(layer index or None, module kind) from a tensor's name: the layer is the first numeric part."""
    numbers = [int(part) for part in tensor.split(".") if part.isdigit()]
    layer = numbers[0] if numbers else None
    kind = "attention" if _ATTENTION.search(tensor) else "mlp" if _MLP.search(tensor) else "other"
    return layer, (kind if layer is not None else "other")


@dataclass
class Distances:
    names: List[str]
    tensors: List[str]
    per_tensor: np.ndarray  # (tensors, models, models): relative squared L2 distance per tensor
    peak_bytes: int  # the block buffer: the most tensor data held at once, besides one model's block being read

    @property
    def matrix(self) -> np.ndarray:
        return self.per_tensor.mean(axis=0)

    def nearest(self) -> List[int]:
        """Each model's nearest relative (smallest distance, itself excluded)."""
        masked = self.matrix + np.diag(np.full(len(self.names), np.inf))
        return [int(j) for j in masked.argmin(axis=1)]

    def cells(self, i: int, j: int) -> Dict[Tuple[Optional[int], str], float]:
        """(layer, kind) -> mean relative squared distance of models i and j over the cell's tensors."""
        sums: Dict[Tuple[Optional[int], str], List[float]] = {}
        for t, tensor in enumerate(self.tensors):
            sums.setdefault(tensor_place(tensor), []).append(self.per_tensor[t, i, j])
        return {cell: float(np.mean(values)) for cell, values in sums.items()}

    def layer_profile(self) -> np.ndarray:
        """Per layer, the mean distance over every pair of models: where the models differ."""
        layers = sorted({layer for layer, _ in map(tensor_place, self.tensors) if layer is not None})
        rows = np.triu_indices(len(self.names), k=1)
        profile = []
        for layer in layers:
            picked = [t for t, tensor in enumerate(self.tensors) if tensor_place(tensor)[0] == layer]
            profile.append(self.per_tensor[picked][:, rows[0], rows[1]].mean())
        return np.array(profile)


def measure_distances(models: Sequence[ModelWeights], budget_bytes: Optional[int] = None) -> Distances:
    """Stream every tensor of every model in row blocks of at most `budget_bytes` (float64) in all."""
    budget_bytes = budget_bytes or min(DEFAULT_BUDGET_BYTES, models[0].nbytes)
    count = len(models)
    tensors = [name for name in models[0].tensors]
    per_tensor = np.zeros((len(tensors), count, count))
    plans = {}  # tensor -> (rows, elements per row, rows per block)
    for tensor in tensors:
        shape = models[0].tensors[tensor][1]
        row_elements = int(np.prod(shape[1:]))
        plans[tensor] = (shape[0] if shape else 1, row_elements, max(1, budget_bytes // (8 * count * row_elements)))
    # one buffer for every block, so the allocator is not left holding freed blocks of all sizes
    buffer = torch.empty(max(count * e * min(r, s) for r, e, s in plans.values()), dtype=torch.float64)
    kept = []
    for t, tensor in enumerate(tensors):
        rows, row_elements, step = plans[tensor]
        gram = torch.zeros((count, count), dtype=torch.float64)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            block = buffer[: count * row_elements * (stop - start)].view(count, -1)
            for k, weights in enumerate(models):
                block[k] = weights.read(tensor, start, stop)
            gram += block @ block.T
        squares = torch.diagonal(gram)
        scale = float(squares.mean())
        if scale == 0.0:  # zero in every model: nothing differs here
            continue
        kept.append(t)
        per_tensor[t] = (torch.clamp(squares[:, None] + squares[None, :] - 2 * gram, min=0.0) / scale).numpy()
        np.fill_diagonal(per_tensor[t], 0.0)
    return Distances([m.name for m in models], [tensors[t] for t in kept], per_tensor[kept], buffer.nbytes)


def write_tables(distances: Distances, out: Path) -> Tuple[Path, Path]:
    """distances.csv (the matrix) and layers.csv (each model against its nearest relative)."""
    names = distances.names
    matrix_path = out / "distances.csv"
    with matrix_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model"] + names)
        for name, row in zip(names, distances.matrix):
            writer.writerow([name] + [f"{value:.6g}" for value in row])
    layers_path = out / "layers.csv"
    with layers_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "nearest_relative", "layer", "module", "distance"])
        for i, j in enumerate(distances.nearest()):
            for (layer, kind), value in sorted(distances.cells(i, j).items(), key=lambda c: (c[0][0] is not None, c[0])):
                writer.writerow([names[i], names[j], "" if layer is None else layer, kind, f"{value:.6g}"])
    return matrix_path, layers_path
