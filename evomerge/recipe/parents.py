"""Checks the parents before a search starts: present, safe to load, and mergeable.

Every problem names the recipe file and the key that references the model, and, for a
mismatch, the tensor; nothing has been loaded yet when these errors are raised. A reference
that is no folder is a Hub id: it must be in the Hub cache or on the Hub (one metadata call),
else the error names the folder looked for beside the recipe and whether the Hub was offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Collection, Dict, Optional, Tuple

from mergekit.common import ModelPath, ModelReference
from mergekit.config import MergeConfiguration
from safetensors import safe_open

from evomerge.errors import EvomergeError
from evomerge.recipe import layout

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _is_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))


class _Checker:
    def __init__(self, source: Path, allow_pickle: bool):
        self.source = source
        self.allow_pickle = allow_pickle

    def error(self, message: str, key: str) -> EvomergeError:
        return EvomergeError(message, path=self.source, key=key)

    def folder(self, reference: ModelReference, key: str) -> Optional[Path]:
        """The local folder, or None for a hub id that mergekit will fetch."""
        for part in filter(None, (reference.model, reference.lora)):
            folder = Path(part.path)
            if not folder.exists():
                if _is_hub_id(part.path):
                    self.on_hub(part, key)
                    return None
                raise self.error(f"model folder not found: {folder}", key)
            if not folder.is_dir():
                raise self.error(f"expected a model folder, found a file: {folder}", key)
        return Path(reference.model.path) if reference.lora is None else None

    def on_hub(self, part: ModelPath, key: str) -> None:
        """A Hub id that mergekit and transformers can fetch (or find cached), else one line saying where
        it was looked for: a relative path with no folder beside the recipe reads as a Hub id."""
        import httpx2
        from huggingface_hub import HfApi, constants, try_to_load_from_cache
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

        if any(isinstance(try_to_load_from_cache(part.path, name, revision=part.revision), str)
               for name in ("config.json", "adapter_config.json")):  # a model's, a LoRA's
            return
        nowhere = f"no model folder {(self.source.parent / part.path).resolve()}, and {part.path!r}"
        if constants.is_offline_mode():
            raise self.error(f"{nowhere} is not in the Hub cache while the Hub is offline (HF_HUB_OFFLINE)", key)
        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None)  # read now, as outputs/hub.py
        try:
            api.model_info(part.path, revision=part.revision)
        except GatedRepoError:  # there; fetching it says what access it needs
            return
        except HfHubHTTPError as error:
            if error.response is not None and error.response.status_code in (401, 404):  # the Hub hides private repos
                at = f" at revision {part.revision}" if part.revision else ""
                raise self.error(f"{nowhere} is not a model on the Hub ({api.endpoint}){at}, or not one this login "
                                 "may read", key) from None
            raise self.error(f"{nowhere} cannot be read from the Hub ({api.endpoint}): {' '.join(str(error).split())}",
                             key) from None
        except (httpx2.HTTPError, OSError) as error:  # no connection
            raise self.error(f"{nowhere} could not be looked up: the Hub ({api.endpoint}) was not reachable "
                             f"({' '.join(str(error).split())})", key) from None

    def config(self, folder: Path, key: str) -> dict:
        path = folder / "config.json"
        if not path.is_file():
            raise self.error(f"no config.json in {folder}: not a Hugging Face model folder", key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise self.error(f"malformed {path} ({error})", key) from None

    def shapes(self, folder: Path, key: str) -> Optional[Dict[str, Tuple[int, ...]]]:
        """Tensor name -> shape from the safetensors headers; None for an allowed pickle checkpoint."""
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles and not self.allow_pickle:
                raise self.error(f"{folder} has only pickle weights ({pickles[0]}), which can run code when "
                                 "loaded; convert them to safetensors or pass --allow-pickle", key)
            if pickles:
                return None
            raise self.error(f"no weights in {folder} (expected *.safetensors)", key)
        shapes = {}
        for shard in shards:
            try:
                with safe_open(shard, framework="pt") as handle:
                    for name in handle.keys():
                        shapes[name] = tuple(handle.get_slice(name).get_shape())
            except Exception as error:  # safetensors raises its own error types for damaged files
                raise self.error(f"unreadable safetensors file {shard} ({error})", key) from None
        return shapes


def _vocabulary(folder: Path) -> Optional[dict]:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab")


def check_parents(merge: MergeConfiguration, source: Path, *, allow_pickle: bool = False,
                  produced: Collection[str] = ()) -> None:
    """`produced`: names of earlier stages, whose outputs the merge reads (checked as their own stage)."""
    checker = _Checker(source, allow_pickle)
    local = []
    for key, reference in layout.references(merge):
        if reference.model.path in produced:
            continue
        folder = checker.folder(reference, key)
        if folder is not None:
            local.append((key, reference, folder, checker.config(folder, key), checker.shapes(folder, key)))
    if len(local) < 2:
        return
    _, first, first_folder, first_config, first_shapes = local[0]
    own_vocabulary = merge.tokenizer_source is None and merge.tokenizer is None
    first_vocabulary = _vocabulary(first_folder) if own_vocabulary else None
    for key, reference, folder, config, shapes in local[1:]:
        for field in ("model_type", "architectures") + (("vocab_size",) if own_vocabulary else ()):
            if config.get(field) != first_config.get(field):
                raise checker.error(f"{reference}: {field} is {config.get(field)!r} but {first} has "
                                    f"{first_config.get(field)!r}", key)
        if shapes is not None and first_shapes is not None:
            if layout.whole_models(merge) and set(shapes) != set(first_shapes):
                name = sorted(set(shapes) ^ set(first_shapes))[0]
                raise checker.error(f"tensor {name} is in {reference if name in shapes else first} only", key)
            for name in sorted(set(shapes) & set(first_shapes)):
                vocabulary_tensor = "embed" in name or "lm_head" in name
                if shapes[name] != first_shapes[name] and (own_vocabulary or not vocabulary_tensor):
                    raise checker.error(f"{reference}: tensor {name} has shape {list(shapes[name])} but {first} "
                                        f"has {list(first_shapes[name])}", key)
        if own_vocabulary and _vocabulary(folder) != first_vocabulary:
            raise checker.error(f"{reference}: its tokenizer differs from {first}'s; set tokenizer_source "
                                "(e.g. union) to merge vocabularies", key)
