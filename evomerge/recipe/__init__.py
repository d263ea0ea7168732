"""The recipe: a mergekit recipe plus its `evomerge:` section, validated once at the edge.

model.py reads the file into pydantic types; layout.py gives every recipe shape (`models:`,
`slices:`) one normalized view; space.py maps gene vectors to concrete mergekit recipes, routing.py
a layer route's genes to a passthrough recipe (route.py), and genome.py a mergekit-evolve genotype (decoded by mergekit's own code); evolve_config.py reads a
mergekit-evolve config as the recipe it stands for;
parents.py and validate.py check everything that needs no weights loaded, all at once;
custom_fitness.py imports a recipe's own fitness function; device_defaults.py decides what the
recipe leaves to the device (the scoring dtype and batch size). After this layer, types are trusted.
"""

from evomerge.recipe.model import Recipe, load_recipe
from evomerge.recipe.space import Candidate, Gene, SearchSpace

__all__ = ["Candidate", "Gene", "Recipe", "SearchSpace", "load_recipe"]
