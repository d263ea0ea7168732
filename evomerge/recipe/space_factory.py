"""The search space a recipe asks for: a mergekit-evolve genome's, a layer route's, or its parameters'.

The one place that knows every kind of space, so the base class (space.py) knows none of them.
"""

from __future__ import annotations

from evomerge.recipe.genes import parameter_space
from evomerge.recipe.genome import GenomeSpace
from evomerge.recipe.loading import Recipe
from evomerge.recipe.routing import RoutingSpace, routing_entry
from evomerge.recipe.space import SearchSpace


def build_space(recipe: Recipe) -> SearchSpace:
    """The genes `recipe` searches, and how a vector of them decodes into a concrete recipe."""
    if recipe.spec.genome is not None:
        return GenomeSpace.from_genome(recipe)
    if routing_entry(recipe) >= 0:
        return RoutingSpace.from_recipe(recipe)
    return parameter_space(recipe)
