"""The recipe: a mergekit recipe plus its `evomerge:` section, validated once at the edge.

Its modules, from the top down (arrows only point down; pyproject.toml's contract keeps it so):

- validate.py checks everything a search needs that needs no weights loaded, all at once.
- space_factory.py builds the search space a recipe asks for; genome.py's (a mergekit-evolve
  genotype, decoded by mergekit's own code) and routing.py's (a layer route's genes, decoded to a
  passthrough recipe by route.py) subclass space.py's, whose genes for `search:`'s parameters
  genes.py builds; space.py maps a gene vector to a candidate.py `Candidate` (the concrete recipe).
- loading.py reads a file into a `Recipe` (with the command line's overrides): parsing.py (YAML,
  mergekit's config), stages.py (mergekit-multi's documents in merge order), evolve_config.py (a
  mergekit-evolve config read as the recipe it stands for), into schema.py's pure pydantic types.
- json_schema.py gives editors the JSON Schema of a recipe file (`evomerge schema`): mergekit's keys,
  a stage's name, and schema.py's types.
- Below them: references.py finds model references and makes local paths absolute; layout.py gives
  every recipe shape (`models:`, `slices:`) one normalized view; parents.py checks the parents'
  files; route.py and track.py are the routing block's and the trackers' types; custom_fitness.py
  imports a recipe's own fitness function; device_defaults.py decides what the recipe leaves to the
  device (the scoring dtype and batch size).

After this layer, types are trusted.
"""

from evomerge.recipe.candidate import Candidate, Gene
from evomerge.recipe.loading import Recipe, load_recipe
from evomerge.recipe.space import SearchSpace
from evomerge.recipe.space_factory import build_space

__all__ = ["Candidate", "Gene", "Recipe", "SearchSpace", "build_space", "load_recipe"]
