"""The JSON Schema of a recipe file, for editors: mergekit's keys from mergekit's own pydantic models, the
stage `name:` of a multi-stage recipe, and the `evomerge:` section from schema.py, searchers included.

Made when asked for, so a merge method or a searcher registered by then is in it. JSON Schema checks one
document; a mergekit-multi file is checked document by document (editors do so for YAML). Written in draft 7,
the draft YAML editors check with (VS Code's YAML extension, PyCharm), from pydantic's 2020-12.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from mergekit import merge_methods
from mergekit.config import MergeConfiguration
from pydantic import ConfigDict, Field

from evomerge.recipe.schema import EvomergeSpec
from evomerge.recipe.stages import NAME

DIALECT = "http://json-schema.org/draft-07/schema#"
STRING_FORMS = {"ModelReference": "a Hub name or a folder: model[@revision][+lora[@revision]]",
                "ModelPath": "a Hub name or a folder: path[@revision]"}


class RecipeDocument(MergeConfiguration):
    """An evomerge recipe: a mergekit recipe (its keys as mergekit's MergeConfiguration gives them) with an
    `evomerge:` section. A multi-stage (mergekit-multi) file holds several YAML documents, each one stage named
    by `name:`, and is checked document by document against this schema; one of them holds the `evomerge:`
    section. A mergekit-evolve config (a top-level `genome:`) is not a recipe: `evomerge convert` writes one."""

    model_config = ConfigDict(extra="forbid", title="evomerge recipe")  # the loader refuses other keys (parsing.py)
    name: Optional[str] = Field(None, pattern=f"^{NAME.pattern}$",
                                description="This stage's name, which a later document's model names")
    evomerge: Optional[EvomergeSpec] = Field(None, description="evomerge's section: the search over this recipe.")


def recipe_json_schema() -> Dict[str, Any]:
    """The schema as a JSON-ready dict."""
    schema = _draft7(RecipeDocument.model_json_schema(ref_template="#/definitions/{model}"))
    defs = schema.pop("$defs")
    for name, form in STRING_FORMS.items():  # mergekit reads them from a string too (their validate_string)
        defs[name] = {"anyOf": [{"type": "string", "description": form}, defs[name]]}
    defs["InputModelDefinition"]["additionalProperties"] = False  # the loader refuses other keys there too
    schema["properties"]["merge_method"]["enum"] = sorted(m.spec.name for m in merge_methods.registered_methods())
    return {"$schema": DIALECT, **schema, "definitions": defs}


def _draft7(node: Any) -> Any:
    """pydantic's tuples (`prefixItems`, 2020-12) as draft 7 writes them (`items` as a list)."""
    if isinstance(node, list):
        return [_draft7(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {("items" if key == "prefixItems" else key): _draft7(value) for key, value in node.items()}
