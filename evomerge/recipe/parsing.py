"""A recipe file's text read into checked data: YAML (an anchor used inside itself refused) and
mergekit's own MergeConfiguration, with errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml
from mergekit import merge_methods
from mergekit.common import dtype_from_name
from mergekit.config import InputModelDefinition, MergeConfiguration
from mergekit.merge_methods.base import BasePolicy

from evomerge.errors import SECTION, EvomergeError, did_you_mean, validated
from evomerge.recipe.references import map_model_references, resolver, stage_name


def read_text(path: Path) -> str:
    if not path.is_file():
        raise EvomergeError("recipe file not found", path=path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EvomergeError(f"expected a UTF-8 text file, found byte {error.object[error.start]:#04x} at "
                            f"position {error.start}", path=path) from None


def parse_yaml(text: str, path: Path, documents: bool = False) -> Any:
    """The YAML document (with `documents`, the list of them: `mergekit-multi`'s stages), or one line
    saying where it is malformed; an anchor used inside itself (a structure that contains itself) is
    refused too, as nothing downstream can walk it."""
    try:
        raw = ([d for d in yaml.safe_load_all(text) if d is not None] or [None]) if documents else yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = getattr(error, "position", None)  # a ReaderError: a character YAML does not allow
        where = f"line {mark.line + 1}" if mark else f"position {position}" if position is not None else None
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise EvomergeError(f"malformed YAML: {problem}", path=path, key=where) from None
    for index, document in enumerate(raw if documents else [raw]):
        if (loop := _self_reference(document)) is not None:
            where = f"documents[{index}].{loop}" if documents and len(raw) > 1 else loop
            raise EvomergeError("expected plain data, found an anchor used inside itself", path=path, key=where)
    return raw


def parse_merge_config(raw: Dict[str, Any], path: Path, stages: Sequence[str] = ()) -> MergeConfiguration:
    """mergekit's own MergeConfiguration, with errors that name the file and the key; model references
    that name one of `stages` (earlier merges of a multi-stage recipe) are left as they are."""
    known = set(MergeConfiguration.model_fields) | {SECTION}
    for key in raw:
        if key not in known:
            raise EvomergeError(f"unknown key{did_you_mean(str(key), known)}", path=path, key=str(key))
    entry_keys = set(InputModelDefinition.model_fields)  # mergekit ignores others: a misspelt `parameters` is lost
    models = raw.get("models")
    for index, entry in enumerate(models if isinstance(models, list) else []):
        for key in entry if isinstance(entry, dict) else ():
            if key not in entry_keys:
                raise EvomergeError(f"unknown key{did_you_mean(str(key), entry_keys)}", path=path,
                                    key=f"models[{index}].{key}")
    resolve = resolver(path.parent)
    raw = map_model_references(raw, lambda reference: reference if stage_name(reference) in stages else resolve(reference))
    config = validated(MergeConfiguration, raw, path, None)
    for key in ("dtype", "out_dtype"):  # mergekit reads them only once it merges, after its progress bars
        try:
            dtype_from_name(getattr(config, key))
        except RuntimeError:
            raise EvomergeError(f"expected a dtype such as float32, bfloat16 or float16, got {getattr(config, key)!r}",
                                path=path, key=key) from None
    try:
        method = merge_methods.get(config.merge_method)
    except RuntimeError:
        names = [m.spec.name for m in merge_methods.registered_methods()]
        raise EvomergeError(
            f"unknown merge method {config.merge_method!r}{did_you_mean(config.merge_method, names)}; "
            f"expected one of {', '.join(sorted(names))}",
            path=path, key="merge_method",
        ) from None
    if config.models and config.base_model is None and method.spec.contract.base == BasePolicy.REQUIRED:
        # mergekit finds it out only once it merges, after its progress bars
        raise EvomergeError(f"the {config.merge_method} merge needs a base_model", path=path, key="base_model")
    return config


def _self_reference(node: Any, key: str = "", inside: Tuple[int, ...] = ()) -> Optional[str]:
    """The key of the first value that contains itself, or None."""
    if not isinstance(node, (dict, list)):
        return None
    if id(node) in inside:
        return key or "(top level)"
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for name, value in items:
        found = _self_reference(value, f"{key}[{name}]" if isinstance(node, list) else f"{key}.{name}".lstrip("."),
                                inside + (id(node),))
        if found is not None:
            return found
    return None

