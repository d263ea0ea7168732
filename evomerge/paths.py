"""Where a source checkout keeps its recipes, tasks and zoo."""

from pathlib import Path

from evomerge.errors import EvomergeError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = PROJECT_ROOT / "recipes"
TASKS_DIR = RECIPES_DIR / "tasks"
DEFAULT_ZOO_DIR = RECIPES_DIR / "zoo"


def require_checkout() -> None:
    """The demo and the zoo's tasks live in the repository, not in the wheel."""
    if not TASKS_DIR.is_dir():
        raise EvomergeError(
            "expected a source checkout with recipes/tasks beside the package "
            "(install with `pip install -e .` from a clone)",
            path=TASKS_DIR,
        )
