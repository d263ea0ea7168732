"""Reads a mergekit recipe with an `evomerge:` section and validates it once, at the edge.

The file stays an ordinary mergekit recipe: `mergekit-yaml` ignores the `evomerge:` key.
Relative model paths and task paths are taken relative to the recipe file when they
exist there, so a recipe works from any working directory. A mergekit-evolve config is read
as the recipe `evomerge convert` writes for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mergekit.config import MergeConfiguration

from evomerge.errors import SECTION, EvomergeError, validated
from evomerge.recipe.evolve_config import recipe_text
from evomerge.recipe.layout import Stage
from evomerge.recipe.parsing import parse_yaml, read_text
from evomerge.recipe.references import map_model_references, resolver
from evomerge.recipe.schema import BudgetSpec, EvomergeSpec
from evomerge.recipe.stages import check_gene_stages, read_stages
from evomerge.searchers.spec import SearcherSpec


@dataclass(frozen=True)
class Recipe:
    path: Path
    text: str
    stages: Tuple[Stage, ...]  # in merge order, the final merge last; one for a one-document recipe
    spec: EvomergeSpec

    @property
    def merge(self) -> MergeConfiguration:
        """The final merge: the model that is scored."""
        return self.stages[-1].merge

    @property
    def directory(self) -> Path:
        return self.path.parent

    def task_paths(self) -> List[Path]:
        paths = []
        for index, entry in enumerate(self.spec.task_paths):
            path = (self.directory / entry).resolve()
            if not path.is_dir():
                raise EvomergeError(f"expected a folder of lm-eval task YAML files, found nothing at {path}",
                                    path=self.path, key=f"{SECTION}.task_paths[{index}]")
            paths.append(path)
        return paths

    def with_overrides(self, *, seed: Optional[int] = None, evaluations: Optional[int] = None,
                       searcher: Optional[str] = None, searcher_options: Mapping[str, Any] = {},
                       batch_size: Optional[int] = None, task_paths: Sequence[str] = ()) -> "Recipe":
        """The recipe as the command line amends it (`--seed`, `--evaluations`, `--searcher`, and
        mergekit-evolve's `--sigma0`, `--force-population-size`, `--batch-size` and
        `--task-search-path`, which adds task folders)."""
        update: Dict[str, Any] = {}
        if seed is not None:
            update["seed"] = seed
        if evaluations is not None:
            update["budget"] = BudgetSpec(**{**(self.spec.budget.model_dump() if self.spec.budget else {}),
                                             "evaluations": evaluations})
        if searcher is not None and searcher != self.spec.searcher.name:
            update["searcher"] = SearcherSpec(name=searcher)
        if searcher_options:
            current = update.get("searcher", self.spec.searcher)
            update["searcher"] = SearcherSpec(**{**current.model_dump(), **searcher_options})
        if batch_size is not None:
            update["eval"] = self.spec.eval.model_copy(update={"batch_size": batch_size})
        if task_paths:
            update["task_paths"] = list(self.spec.task_paths) + [str(Path(p).resolve()) for p in task_paths]
        return dataclasses.replace(self, spec=self.spec.model_copy(update=update))

    def require_search(self) -> None:
        """What `evomerge search` needs beyond what `evomerge merge` needs."""
        searched_noise = self.spec.noise is not None and self.spec.noise.range is not None
        if not self.spec.search and self.spec.genome is None and not searched_noise:
            raise EvomergeError("expected at least one searched parameter (or a noise range)",
                                path=self.path, key=f"{SECTION}.search")
        if not self.spec.tasks and self.spec.fitness is None:
            raise EvomergeError("expected lm-eval tasks (or a custom fitness) to score candidates",
                                path=self.path, key=f"{SECTION}.tasks")
        if self.spec.budget is None:
            raise EvomergeError("expected a budget, e.g. {evaluations: 64}", path=self.path, key=f"{SECTION}.budget")


def load_recipe(path: Union[str, Path], text: Optional[str] = None) -> Recipe:
    """Read and validate a recipe; `text` stands in for the file's content (a stored run's copy)."""
    path = Path(path)
    text = read_text(path) if text is None else text
    documents = parse_yaml(text, path, documents=True)
    raw = documents[0] if len(documents) == 1 else None
    if not isinstance(raw, dict) and len(documents) == 1:
        raise EvomergeError("expected a mapping of mergekit keys at the top level", path=path)
    if raw is not None and "genome" in raw:  # a mergekit-evolve config: read as the recipe `evomerge convert` writes
        return load_recipe(path, recipe_text(raw, path))
    section, stages = read_stages(documents, path)
    section = section or {}
    if isinstance(section, dict) and isinstance(section.get("genome"), dict):
        section = {**section, "genome": map_model_references(section["genome"], resolver(path.parent))}
    spec = validated(EvomergeSpec, section, path, SECTION)
    _check_confirm(spec, path)
    check_gene_stages(spec, stages, path)
    return Recipe(path=path.resolve(), text=text, stages=stages, spec=spec)


def _check_confirm(spec: EvomergeSpec, path: Path) -> None:
    """Confirmation tasks are a third split: scoring finalists on what chose them, or on what the
    report shows, would confirm nothing."""
    used = {t.name: "a search task" for t in spec.tasks} | {t: "a report task" for t in spec.report_tasks}
    for index, task in enumerate(spec.confirm.tasks):
        if task in used:
            raise EvomergeError(f"expected tasks the search and the report do not use, got {task!r}, {used[task]}",
                                path=path, key=f"{SECTION}.confirm.tasks[{index}]")
