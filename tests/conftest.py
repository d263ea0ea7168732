"""Shared fixtures: the zoo is built once per session (and reused across sessions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.paths import DEFAULT_ZOO_DIR, TASKS_DIR


@pytest.fixture(scope="session")
def zoo() -> dict:
    """The zoo's manifest, with `dir` added; built on first use, cached on disk."""
    from evomerge.zoo.build import build_zoo

    manifest = dict(build_zoo(DEFAULT_ZOO_DIR))
    manifest["dir"] = DEFAULT_ZOO_DIR
    return manifest


@pytest.fixture(scope="session")
def tasks_dir() -> Path:
    return TASKS_DIR


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe (a dict) as YAML and return its path."""
    import yaml

    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def specialists(zoo) -> list:
    return [str(zoo["dir"] / m["path"]) for m in zoo["models"] if m["skill"]]


@pytest.fixture(scope="session")
def base_model(zoo) -> str:
    return str(zoo["dir"] / "base")


@pytest.fixture
def demo_recipe(write_recipe, zoo, tasks_dir):
    """recipes/demo.yaml with absolute paths, its evomerge section amended by keyword."""
    import yaml

    from evomerge.paths import RECIPES_DIR

    def make(name: str = "demo.yaml", **evomerge) -> Path:
        recipe = yaml.safe_load((RECIPES_DIR / "demo.yaml").read_text())
        recipe["base_model"] = str(zoo["dir"] / "base")
        for entry in recipe["models"]:
            entry["model"] = str(zoo["dir"] / Path(entry["model"]).name)
        recipe["evomerge"]["task_paths"] = [str(tasks_dir)]
        recipe["evomerge"].update(evomerge)
        return write_recipe(recipe, name)

    return make
