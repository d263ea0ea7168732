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


def neighbor_joining(distances: Distances, root: Optional[str] = None):
    """Biopython's neighbor-joining tree, rooted at `root` (an outgroup) or else at its midpoint.

    Neighbor joining can give slightly negative branch lengths when the distances are not
    exactly additive; they are set to zero, as is usual.
    """
    from Bio.Phylo.TreeConstruction import DistanceMatrix, DistanceTreeConstructor

    matrix = distances.matrix
    lower = [[float(matrix[i, j]) for j in range(i + 1)] for i in range(len(distances.names))]
    tree = DistanceTreeConstructor().nj(DistanceMatrix(list(distances.names), lower))
    if root is not None:
        tree.root_with_outgroup(root)
    else:
        tree.root_at_midpoint()
    for clade in tree.find_clades():
        if not clade.is_terminal():
            clade.name = None
        if clade.branch_length is not None and clade.branch_length < 0:
            clade.branch_length = 0.0
    tree.rooted = True
    return tree


def suggest_layer_groups(profile: Sequence[float], groups: int) -> List[Tuple[int, int]]:
    """The split of the layers into `groups` contiguous ranges [start, end) that best separates
    layers that differ much from layers that differ little (least squares, by dynamic programming)."""
    values = np.asarray(profile, dtype=float)
    n = len(values)
    if not 1 <= groups <= n:
        raise EvomergeError(f"expected between 1 and {n} groups (the models have {n} layers), got {groups}",
                            key="--suggest-groups")
    prefix, prefix_sq = np.concatenate([[0], np.cumsum(values)]), np.concatenate([[0], np.cumsum(values**2)])

    def cost(a: int, b: int) -> float:  # squared deviation of values[a:b] from their mean
        return prefix_sq[b] - prefix_sq[a] - (prefix[b] - prefix[a]) ** 2 / (b - a)

    best = np.full((groups + 1, n + 1), np.inf)
    cut = np.zeros((groups + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, groups + 1):
        for b in range(k, n + 1):
            options = [best[k - 1, a] + cost(a, b) for a in range(k - 1, b)]
            cut[k, b] = k - 1 + int(np.argmin(options))
            best[k, b] = min(options)
    ranges, end = [], n
    for k in range(groups, 0, -1):
        ranges.append((int(cut[k, end]), end))
        end = int(cut[k, end])
    return ranges[::-1]


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


def score_models(models: Sequence[ModelWeights], tasks: Sequence[str], task_paths: Sequence[Path],
                 device: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """The phenotype: model name -> task -> its main metric (`acc` when the task has it), one model loaded at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluate import LMEvalScorer, TaskSuite

    for path in task_paths:
        if not Path(path).is_dir():
            raise EvomergeError(f"expected a folder of lm-eval task YAML files, found nothing at {path}", key="--task-path")
    suite = TaskSuite(tasks, task_paths, key="--tasks")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scores = {}
    for weights in models:
        model = AutoModelForCausalLM.from_pretrained(weights.folder, dtype=torch.float32).to(device)
        tokenizer = AutoTokenizer.from_pretrained(weights.folder)
        metrics = LMEvalScorer(suite, model, tokenizer).score()
        scores[weights.name] = {task: _main_metric(values) for task, values in metrics.items()}
        del model
    return scores


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve())


def _main_metric(values: Dict[str, float]) -> float:
    if "acc" in values:
        return values["acc"]
    return next(value for name, value in values.items() if not name.endswith("_stderr"))


def write_family_tree(references: Sequence[str], out: Path, *, reference: Optional[str] = None,
                      tasks: Sequence[str] = (), task_paths: Sequence[Path] = (),
                      device: Optional[str] = None) -> Tuple[Distances, List[Path]]:
    """tree.nwk, tree.png, distances.csv, layers.csv, layers.png (and scores.csv with tasks) in `out`.

    A `reference` not among the models joins them as a leaf; the tree is rooted at it.
    """
    from Bio import Phylo

    from evomerge.tree_plots import draw_layers, draw_tree

    references = list(references)
    same = [r for r in references if reference is not None and _same_model(r, reference)]
    if reference is not None and not same:
        references.append(reference)
    models = open_models(references)
    root = models[references.index(same[0] if same else reference)].name if reference is not None else None
    scores = score_models(models, tasks, task_paths, device) if tasks else None
    distances = measure_distances(models)
    tree = neighbor_joining(distances, root)
    out.mkdir(parents=True, exist_ok=True)
    newick = out / "tree.nwk"
    Phylo.write(tree, newick, "newick")
    files = [newick, *write_tables(distances, out)]
    files.append(draw_tree(tree, out / "tree.png", scores))
    files.append(draw_layers(distances, out / "layers.png"))
    if scores:
        files.append(_write_scores(scores, out / "scores.csv"))
    return distances, files


def _write_scores(scores: Dict[str, Dict[str, float]], path: Path) -> Path:
    tasks = list(next(iter(scores.values())))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model"] + tasks)
        for name, values in scores.items():
            writer.writerow([name] + [f"{values[task]:.6g}" for task in tasks])
    return path
