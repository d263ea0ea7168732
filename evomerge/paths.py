"""Where evomerge finds the files it ships (the demo recipe, the zoo's tasks, the notebook) and where it
keeps the zoo it builds.

recipes/ and notebooks/ stay at the top of the repository; a wheel carries them inside the package as
evomerge/_recipes and evomerge/_notebooks (pyproject.toml maps them), so the package's own folder says
which of the two it is. EVOMERGE_HOME is read once, at import, like Hugging Face's HF_HOME.
"""

import os
from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def _shipped(folder: str) -> Path:
    """A top-level folder of the repository: inside the package when installed from a wheel."""
    inside = PACKAGE_DIR / f"_{folder}"
    return inside if inside.is_dir() else PROJECT_ROOT / folder


RECIPES_DIR = _shipped("recipes")
TASKS_DIR = RECIPES_DIR / "tasks"
NOTEBOOK = _shipped("notebooks") / "quickstart.ipynb"


def _home() -> Path:
    """$EVOMERGE_HOME; else recipes/ in a checkout, where the tests and docs expect the zoo; else the
    user's cache directory, as site-packages is no place for trained models."""
    if os.environ.get("EVOMERGE_HOME"):
        return Path(os.environ["EVOMERGE_HOME"]).expanduser().resolve()
    if RECIPES_DIR == PROJECT_ROOT / "recipes":
        return RECIPES_DIR
    return Path(platformdirs.user_cache_dir("evomerge"))


EVOMERGE_HOME = _home()
DEFAULT_ZOO_DIR = EVOMERGE_HOME / "zoo"
