"""Everything a search needs that can be checked before anything loads, in one step that
reports every problem it finds at once; after it, the modules trust the types.

Each check raises an `EvomergeError` naming the file, the key and what was expected; this
step runs them all (a check that needs the model folders runs only once they are sound)
and raises one error that lists every problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, TypeVar

from evomerge.errors import SECTION, EvomergeError
from evomerge.recipe.chat_template import check_chat_template
from evomerge.recipe.custom_fitness import load_custom_fitness
from evomerge.recipe.loading import Recipe
from evomerge.recipe.parents import check_parents
from evomerge.recipe.routing import routing_entry
from evomerge.recipe.space import SearchSpace
from evomerge.recipe.space_factory import build_space
from evomerge.recipe.stages import check_stage_parents
from evomerge.searchers import SearcherOptions, searcher_options

T = TypeVar("T")


@dataclass(frozen=True)
class Checked:
    """What the checks built on the way, for the search to use as it is."""

    space: SearchSpace
    searcher: SearcherOptions
    custom_fitness: Optional[Callable]


def _check_racing(recipe: Recipe) -> None:
    spec = recipe.spec
    if spec.eval.racing is None:
        return
    if not spec.tasks:
        raise EvomergeError("racing stops candidates early on lm-eval documents; the recipe has no tasks",
                            path=recipe.path, key=f"{SECTION}.eval.racing")
    if spec.objectives == "separate":
        raise EvomergeError("racing compares one fitness with a bar; use `objectives: sum`",
                            path=recipe.path, key=f"{SECTION}.eval.racing")


def _check_pruner(recipe: Recipe) -> None:
    if recipe.spec.searcher.options().get("pruner") and recipe.spec.eval.racing is None:
        raise EvomergeError("a pruner sees each racing stage; set eval.racing (its stages) too",
                            path=recipe.path, key=f"{SECTION}.searcher.pruner")


def _check_routed(space: SearchSpace, recipe: Recipe, allow_pickle: bool) -> None:
    try:
        check_parents(space.largest_merge(), recipe.path, allow_pickle=allow_pickle,
                      produced=[stage.name for stage in recipe.stages[:-1]])  # PS+DFS: earlier stages are checked
    except EvomergeError as error:
        raise EvomergeError(error.message, path=recipe.path,
                            key=f"{SECTION}.search[{routing_entry(recipe)}].routing.models") from None


def check_search(recipe: Recipe, *, allow_pickle: bool = False) -> Checked:
    problems: List[EvomergeError] = []

    def attempt(check: Callable[[], T]) -> Optional[T]:
        try:
            return check()
        except EvomergeError as error:
            problems.append(error)
            return None

    spec = recipe.spec
    attempt(recipe.require_search)
    attempt(recipe.task_paths)
    attempt(lambda: _check_racing(recipe))
    attempt(lambda: _check_pruner(recipe))
    objectives = len(spec.tasks) if spec.objectives == "separate" else 1
    scores = {t.name: f"{t.name}.{t.metric}" for t in spec.tasks} | ({"custom": "custom.custom"} if spec.fitness else {})
    searcher = attempt(lambda: searcher_options(spec.searcher, objectives, recipe.path, scores))
    if searcher is not None:
        attempt(lambda: searcher.probe(recipe.path))
    custom = attempt(lambda: load_custom_fitness(spec.fitness, recipe.directory, recipe.path)) if spec.fitness else None
    space = None
    if attempt(lambda: check_stage_parents(recipe.stages, recipe.path, allow_pickle=allow_pickle) or True):
        space = attempt(lambda: build_space(recipe))
    if space is not None and space.largest_merge() is not recipe.merge:  # a route: every model it may take
        attempt(lambda: _check_routed(space, recipe, allow_pickle))
    if space is not None and spec.eval.apply_chat_template:
        attempt(lambda: check_chat_template(space.largest_stages(), recipe.path, f"{SECTION}.eval.apply_chat_template",
                                            "set `apply_chat_template: false`"))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "; ".join(": ".join(part for part in (p.key, p.message) if part) for p in problems)
        raise EvomergeError(f"{len(problems)} problems: {listed}", path=recipe.path)
    return Checked(space, searcher, custom)
