"""The bytes a merge holds, from configs and safetensors headers alone: no weight is loaded.

The parents as the parent cache keeps them (in their checkpoint dtypes, narrowed where wider than
the recipe's dtype, as parent_cache.py casts them), the output model (built on the meta device
from mergekit's output config, in the scoring dtype, tied weights counted once) and the merge's
work space: the largest tensor's k inputs cast to the merge dtype plus its result.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from mergekit.common import ModelReference, dtype_from_name
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions

from evomerge.merge.output_model import output_config, resident_model
from evomerge.recipe import layout
from evomerge.recipe.parents import PICKLE_SUFFIXES

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
            "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOATS = {"F64", "F32", "F16", "BF16"}
Tensors = Dict[str, Tuple[int, str]]  # name -> (values, safetensors dtype)


@dataclass(frozen=True)
class Footprint:
    parents: Dict[str, int]  # each parent's bytes in its checkpoint dtypes
    resident_parents: int  # all parents as the parent cache keeps them
    output: int  # the output model in the scoring dtype
    workspace: int  # the largest tensor's k inputs in the merge dtype, plus its result
    largest: Tuple[str, int]  # the largest output tensor's name and values
    merge_dtype: str
    config: Any  # mergekit's output config


def footprint(merge: MergeConfiguration, scoring_dtype: Optional[str], trust_remote_code: bool = False) -> Footprint:
    _, config = output_config(merge, MergeOptions(trust_remote_code=trust_remote_code, quiet=True))
    model = resident_model(config, torch.device("meta"), scoring_dtype, trust_remote_code=trust_remote_code)
    output = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(((name, p.numel()) for name, p in model.named_parameters()), key=lambda item: item[1])
    parents = {str(reference): _tensors(reference) for _, reference in layout.references(merge)}
    widest = max((ITEMSIZE[dtype] for tensors in parents.values() for _, dtype in tensors.values()), default=4)
    merge_size = dtype_from_name(merge.dtype).itemsize if merge.dtype else widest
    return Footprint(
        parents={name: sum(n * ITEMSIZE[dtype] for n, dtype in tensors.values()) for name, tensors in parents.items()},
        resident_parents=sum(_resident(n, dtype, merge_size) for tensors in parents.values()
                             for n, dtype in tensors.values()),
        output=output,
        workspace=(len(parents) + 1) * largest[1] * merge_size,
        largest=largest,
        merge_dtype=merge.dtype or "the checkpoints'",
        config=config,
    )


def _resident(values: int, dtype: str, merge_size: int) -> int:
    """Kept in the checkpoint dtype unless wider than the merge dtype or not floating point (cast at load)."""
    return values * (min(ITEMSIZE[dtype], merge_size) if dtype in FLOATS else merge_size)


def _tensors(reference: ModelReference) -> Tensors:
    """Every tensor of a parent from its safetensors headers (a local folder's, or the Hub's by range
    requests); a pickle checkpoint counts as float32 values of its file's size."""
    folder = Path(reference.model.path)
    if not folder.is_dir():
        from huggingface_hub import get_safetensors_metadata

        files = get_safetensors_metadata(reference.model.path, revision=reference.model.revision).files_metadata
        return {name: (_numel(info.shape), info.dtype) for file in files.values() for name, info in file.tensors.items()}
    found: Tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update({name: (_numel(info["shape"]), info["dtype"])
                      for name, info in _header(shard).items() if name != "__metadata__"})
    if not found:
        found = {p.name: (p.stat().st_size // 4, "F32") for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES}
    return found


def _header(shard: Path) -> Dict[str, Any]:
    """A safetensors file's JSON header (its first 8 bytes give its length), read without mapping the file."""
    with shard.open("rb") as handle:
        return json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))


def _numel(shape) -> int:
    return math.prod(int(size) for size in shape)
