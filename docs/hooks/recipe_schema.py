"""MkDocs hook: the recipe reference is rendered at build time from the pydantic schema of the
`evomerge:` section (evomerge/recipe/schema.py), so the page cannot drift from the code. A page
that holds the marker line gets a table per model in its place: each key, its type, default and
description."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List

MARKER = "<!-- recipe-schema -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from evomerge.recipe.schema import EvomergeSpec

    return markdown.replace(MARKER, render(EvomergeSpec.model_json_schema()))


def render(schema: Dict[str, Any]) -> str:
    """Markdown for a JSON Schema: the root object as `evomerge:`, then every object definition."""
    definitions = schema.get("$defs", {})
    sections = [_section("evomerge", schema)]
    sections += [_section(name, definitions[name]) for name in sorted(definitions)]
    return "\n\n".join(sections)


def _section(name: str, schema: Dict[str, Any]) -> str:
    lines = [f"## {name} {{#{_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [schema["description"].replace("\n", " "), ""]
    properties = schema.get("properties", {})
    if not properties:
        return "\n".join(lines + [f"Type: {_type(schema)}"])
    required = set(schema.get("required", []))
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field in properties.items():
        default = "required" if key in required else _default(field)
        description = field.get("description", "").replace("\n", " ").replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(field)} | {default} | {description} |")
    if schema.get("additionalProperties") is False:
        lines += ["", "Any other key is refused."]
    return "\n".join(lines)


def _default(field: Dict[str, Any]) -> str:
    return f"`{json.dumps(field['default'])}`" if "default" in field else ""


def _type(field: Dict[str, Any]) -> str:
    if "$ref" in field:
        name = field["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for union in ("anyOf", "oneOf"):
        if union in field:
            return " or ".join(_type(option) for option in field[union])
    if "const" in field:
        return f"`{json.dumps(field['const'])}`"
    if "enum" in field:
        return " or ".join(f"`{json.dumps(value)}`" for value in field["enum"])
    kind = field.get("type", "any")
    if kind == "array":
        if "prefixItems" in field:
            return "[" + ", ".join(_type(item) for item in field["prefixItems"]) + "]"
        return f"list of {_type(field.get('items', {}))}"
    if kind == "object" and isinstance(field.get("additionalProperties"), dict):
        return f"mapping of string to {_type(field['additionalProperties'])}"
    return "`null`" if kind == "null" else f"{kind}{_bounds(field)}"


def _bounds(field: Dict[str, Any]) -> str:
    signs = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}
    bounds: List[str] = [f"{sign} {field[key]}" for key, sign in signs.items() if key in field]
    return f" ({', '.join(bounds)})" if bounds else ""


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
