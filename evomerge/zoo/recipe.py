"""The demo recipe with absolute paths, so a copy works from any folder (tests, benchmarks, notebooks)."""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.paths import DEFAULT_ZOO_DIR, RECIPES_DIR, TASKS_DIR


def write_demo_recipe(directory: Path, zoo_dir: Path = DEFAULT_ZOO_DIR, name: str = "demo.yaml", **evomerge) -> Path:
    """recipes/demo.yaml written to `directory`, its `evomerge:` keys replaced by those given."""
    recipe = yaml.safe_load((RECIPES_DIR / "demo.yaml").read_text(encoding="utf-8"))
    recipe["base_model"] = str(Path(zoo_dir) / "base")
    for entry in recipe["models"]:
        entry["model"] = str(Path(zoo_dir) / Path(entry["model"]).name)
    recipe["evomerge"]["task_paths"] = [str(TASKS_DIR)]
    recipe["evomerge"].update(evomerge)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
