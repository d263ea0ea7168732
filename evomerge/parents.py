"""Checks the parents before a search starts: present, safe to load, and mergeable.

Mismatches are reported by model and tensor name, before any weight is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration
from safetensors import safe_open

from evomerge.errors import EvomergeError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _is_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _shapes(folder: Path, allow_pickle: bool) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Tensor name -> shape from safetensors headers; None for an allowed pickle checkpoint."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not allow_pickle:
            raise EvomergeError(f"only pickle weights ({pickles[0].name}), which can run code when loaded; "
                                "convert them to safetensors or pass --allow-pickle", path=folder)
        if pickles:
            return None
        raise EvomergeError("no weights (expected *.safetensors)", path=folder)
    shapes = {}
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise EvomergeError(f"unreadable safetensors file ({error})", path=shard) from None
    return shapes


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise EvomergeError("no config.json: not a Hugging Face model folder", path=folder)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvomergeError(f"malformed JSON ({error})", path=path) from None


def _vocabulary(folder: Path) -> Optional[dict]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab")


def check_parents(merge: MergeConfiguration, *, allow_pickle: bool = False) -> None:
    references = sorted(merge.referenced_models(), key=str)
    local: List[Tuple[ModelReference, Path, dict, Optional[dict]]] = []
    for reference in references:
        for part in filter(None, (reference.model, reference.lora)):
            folder = Path(part.path)
            if not folder.exists():
                if _is_hub_id(part.path):
                    continue  # a hub id: mergekit fetches it where a hub is reachable
                raise EvomergeError("model folder not found", path=folder)
            if not folder.is_dir():
                raise EvomergeError("expected a model folder", path=folder)
        folder = Path(reference.model.path)
        if folder.is_dir() and reference.lora is None:
            local.append((reference, folder, _config(folder), _shapes(folder, allow_pickle)))
    if len(local) < 2:
        return
    first, first_folder, first_config, first_shapes = local[0]
    own_vocabulary = merge.tokenizer_source is None and merge.tokenizer is None
    for reference, folder, config, shapes in local[1:]:
        for key in ("model_type", "architectures") + (("vocab_size",) if own_vocabulary else ()):
            if config.get(key) != first_config.get(key):
                raise EvomergeError(f"{key} is {config.get(key)!r} but {first} has {first_config.get(key)!r}",
                                    path=folder / "config.json")
        if shapes is not None and first_shapes is not None:
            if not merge.slices and set(shapes) != set(first_shapes):
                name = sorted(set(shapes) ^ set(first_shapes))[0]
                owner = reference if name in shapes else first
                raise EvomergeError(f"tensor {name} is only in {owner}", path=folder)
            for name in sorted(set(shapes) & set(first_shapes)):
                if shapes[name] != first_shapes[name] and (own_vocabulary or "embed" not in name and "lm_head" not in name):
                    raise EvomergeError(f"tensor {name} has shape {list(shapes[name])} but {first} has "
                                        f"{list(first_shapes[name])}", path=folder)
        if own_vocabulary and _vocabulary(folder) != _vocabulary(first_folder):
            raise EvomergeError(f"its tokenizer differs from {first}'s; set tokenizer_source (e.g. union) to merge "
                                "vocabularies", path=folder)
