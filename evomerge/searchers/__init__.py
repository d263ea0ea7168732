"""Interchangeable searchers behind one ask/tell protocol; chosen by name in the recipe.

A searcher sees plain vectors in the unit cube and fitness tuples, nothing else: no lm-eval,
no mergekit, no recipe (import-linter holds it to that). One module per searcher, each
registered by name (registry.py); genetic operators are small classes that receive their
random generator. The built-in searchers are imported here so that they register.
"""

from evomerge.searchers import cma, ga, llm, optuna, qd  # noqa: F401  (they register themselves)
from evomerge.searchers.base import Archive, Elite, Fitness, GeneInfo, Proposal, Searcher, SearcherOptions
from evomerge.searchers.registry import SEARCHERS, make_searcher, register, searcher_options
from evomerge.searchers.spec import SearcherSpec

__all__ = ["SEARCHERS", "Archive", "Elite", "Fitness", "GeneInfo", "Proposal", "Searcher", "SearcherOptions", "SearcherSpec",
           "make_searcher", "register", "searcher_options"]
