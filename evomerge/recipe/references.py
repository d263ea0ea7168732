"""Model references in a recipe: where they are, and local paths made absolute.

A recipe names its models as mergekit does (`path[@revision][+lora]`), under the keys below or in a
`models:` list; a relative path that exists beside the recipe file is taken from there, so a recipe
works from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

MODEL_KEYS = {"model", "base_model", "tokenizer_source", "source"}


def map_model_references(node: Any, change: Callable[[str], str]) -> Any:
    """`change` applied to every model reference of a recipe or a genome (`models: [a, b]`)."""
    if isinstance(node, list):
        return [map_model_references(item, change) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: change(value) if key in MODEL_KEYS and isinstance(value, str)
        else [change(v) if isinstance(v, str) else map_model_references(v, change) for v in value]
        if key == "models" and isinstance(value, list)
        else map_model_references(value, change)
        for key, value in node.items()
    }


def stage_name(reference: str) -> str:
    """The part of a model reference mergekit-multi compares with its stage names: the path, without
    `@revision` or `+lora`."""
    return reference.split("+")[0].split("@")[0]


def resolver(base: Path) -> Callable[[str], str]:
    """Make model paths that exist beside the recipe absolute; leave hub ids and others alone."""
    return lambda reference: resolve_model_path(reference, base)


def resolve_model_path(reference: str, base: Path) -> str:
    """`path[@revision][+lora[@revision]]` with each local path made absolute."""
    parts = []
    for part in reference.split("+"):
        location, _, revision = part.partition("@")
        candidate = base / location
        if location and not Path(location).is_absolute() and candidate.exists():
            location = str(candidate.resolve())
        parts.append(location + (f"@{revision}" if revision else ""))
    return "+".join(parts)
