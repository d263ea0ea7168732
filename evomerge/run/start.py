"""Starting and resuming a run: what a search overrides in its recipe (SearchOptions, over the run-wide
RunOptions), the run directory created only for a search that can start, and a resumed run's inputs
checked against the ones it started with. The loop itself is loop.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from pydantic import Field

from evomerge.errors import EvomergeError
from evomerge.recipe.loading import Recipe, load_recipe
from evomerge.run import inputs
from evomerge.run.loop import Search
from evomerge.run.run_lock import RunLock
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

RECIPE_COPY = "recipe.yaml"


class SearchOptions(RunOptions, frozen=True):
    """The run's options and what this search overrides in its recipe; stored with the run."""

    seed: Optional[int] = None
    evaluations: Optional[int] = None
    searcher: Optional[str] = None
    searcher_options: Dict[str, Any] = Field(default_factory=dict)  # over the recipe's (--sigma0, ...)
    batch_size: Optional[int] = None  # lm-eval's
    task_paths: Tuple[str, ...] = ()  # added to the recipe's


def start_search(recipe_path: Path, run_dir: Path, options: SearchOptions = SearchOptions(),
                 worker_factory: Optional[Callable[..., Any]] = None) -> Search:
    """Validate and load everything first; the run directory is created only for a search that can start."""
    recipe = _amended(load_recipe(recipe_path), options)
    RunLock.refuse_held(run_dir)  # a run another process searches is refused naming it, first
    RunStore.check_new(run_dir)
    search = Search(recipe, options, worker_factory)
    lock = RunLock.hold(run_dir)
    store = RunStore.create(run_dir, {
        "recipe_path": str(recipe.path), "recipe_text": recipe.text, "options": options.model_dump(mode="json"),
        "status": "new", "inputs": inputs.fingerprint(recipe),
    })
    (Path(run_dir) / RECIPE_COPY).write_text(recipe.text, encoding="utf-8")
    return search.bind(store, lock)


def resume_search(run_dir: Path, options: RunOptions = RunOptions(), *, evaluations: Optional[int] = None,
                  allow_changed: bool = False) -> Search:
    """Continue a stopped run with the options it was started with, but for those `options` sets (the device,
    the workers, quiet) and a larger budget (`evaluations`), on the inputs it started with: a changed parent, task,
    fitness module or library is refused before anything loads, or with `allow_changed`
    recorded in the run (`input_changes`) and taken as the new inputs."""
    store = RunStore.open(run_dir)
    lock = RunLock.hold(run_dir)
    stored = SearchOptions(**store.meta("options"))
    given = {name: getattr(options, name) for name in options.model_fields_set if getattr(options, name) is not None}
    resumed = stored.model_copy(update={**given, "quiet": options.quiet, "evaluations": evaluations or stored.evaluations})
    recipe = _amended(load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text")), resumed)
    _check_inputs(store, recipe, allow_changed)
    search = Search(recipe, resumed)
    if resumed.model_copy(update={"quiet": stored.quiet}) != stored:
        store.set_meta("options", resumed.model_copy(update={"quiet": stored.quiet}).model_dump(mode="json"))
    return search.bind(store, lock)


def _amended(recipe: Recipe, options: SearchOptions) -> Recipe:
    return recipe.with_overrides(seed=options.seed, evaluations=options.evaluations, searcher=options.searcher,
                                 searcher_options=options.searcher_options, batch_size=options.batch_size,
                                 task_paths=options.task_paths)


def _check_inputs(store: RunStore, recipe: Recipe, allow_changed: bool) -> None:
    current = inputs.fingerprint(recipe)
    found = inputs.changes(store.meta_or("inputs", current), current)
    if not found:
        return
    if not allow_changed:
        raise EvomergeError(f"changed since the run started: {'; '.join(found)}; resume with --allow-changed to "
                            "go on with them (the change is recorded in the run)", path=store.directory)
    store.set_meta("input_changes", store.meta_or("input_changes", []) + [{"time": time.time(), "changes": found}])
    store.set_meta("inputs", current)
