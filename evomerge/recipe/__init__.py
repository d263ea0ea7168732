"""The recipe: a mergekit recipe plus its `evomerge:` section, validated once at the edge.

model.py reads the file into pydantic types; layout.py gives every recipe shape (`models:`,
`slices:`) one normalized view; space.py maps gene vectors to concrete mergekit recipes;
parents.py and validate.py check everything that needs no weights loaded, all at once;
custom_fitness.py imports a recipe's own fitness function; device_defaults.py decides what the
recipe leaves to the device (the scoring dtype and batch size). After this layer, types are trusted.
"""

from evomerge.recipe.model import Recipe, load_recipe
from evomerge.recipe.space import Candidate, Gene, SearchSpace

__all__ = ["Candidate", "Gene", "Recipe", "SearchSpace", "load_recipe"]
