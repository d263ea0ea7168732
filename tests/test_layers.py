"""The layers of README's architecture are a contract: import-linter checks pyproject.toml's contracts."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_every_import_points_down_the_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path):
    """A copy of the package where the searchers import the loop: the lint must fail and name the arrow."""
    shutil.copytree(ROOT / "evomerge", tmp_path / "evomerge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ga = tmp_path / "evomerge" / "searchers" / "ga.py"
    ga.write_text(ga.read_text() + "\nfrom evomerge.run import loop  # noqa: E402,F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "evomerge.searchers.ga -> evomerge.run.loop" in result.stdout


def test_a_base_space_that_imports_its_subclass_breaks_the_recipe_contract(tmp_path):
    """Inside recipe/ too: the base space importing a subclass, even lazily in a function, closes a circle."""
    shutil.copytree(ROOT / "evomerge", tmp_path / "evomerge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    space = tmp_path / "evomerge" / "recipe" / "space.py"
    space.write_text(space.read_text() + "\n\ndef _genome_space():\n    from evomerge.recipe.genome import GenomeSpace\n\n"
                     "    return GenomeSpace\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "evomerge.recipe.space -> evomerge.recipe.genome" in result.stdout
