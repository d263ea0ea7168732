"""A searcher as a recipe names it: below both the recipe, which holds it, and the searchers, which read it."""

from __future__ import annotations

from typing import Any, Dict

from pydantic import BaseModel, ConfigDict


class SearcherSpec(BaseModel):
    """The searcher's name plus its own options, which the searcher validates."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "cma"

    def options(self) -> Dict[str, Any]:
        return dict(self.model_extra or {})
