"""The layers of the architecture (docs/architecture.md) are a contract: import-linter checks
pyproject.toml's contracts, and its graph library, grimp, finds any import cycle between modules."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_every_import_points_down_the_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _lint_a_copy_with(tmp_path, module: str, added: str) -> subprocess.CompletedProcess:
    """The lint of a copy of the package (and its contracts) where `module` (a path under evomerge/) has `added`."""
    shutil.copytree(ROOT / "evomerge", tmp_path / "evomerge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "evomerge" / module
    path.write_text(path.read_text() + added)
    return _lint(tmp_path)


def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path):
    """A copy of the package where the searchers import the loop: the lint must fail and name the arrow."""
    result = _lint_a_copy_with(tmp_path, "searchers/ga.py", "\nfrom evomerge.run import loop  # noqa: E402,F401\n")
    assert result.returncode != 0
    assert "evomerge.searchers.ga -> evomerge.run.loop" in result.stdout


def test_a_base_space_that_imports_its_subclass_breaks_the_recipe_contract(tmp_path):
    """Inside recipe/ too: the base space importing a subclass, even lazily in a function, closes a circle."""
    result = _lint_a_copy_with(tmp_path, "recipe/space.py", "\n\ndef _genome_space():\n"
                               "    from evomerge.recipe.genome import GenomeSpace\n\n    return GenomeSpace\n")
    assert result.returncode != 0
    assert "evomerge.recipe.space -> evomerge.recipe.genome" in result.stdout
def import_cycles(package: str = "evomerge", under: Sequence[str] = ()) -> List[Dict[str, List[str]]]:
    """Every import cycle between the package's modules, lazy imports included (grimp reads every import
    statement, in functions too): per strongly connected group of modules, its `modules` and one closed
    `chain` through them. `under` keeps only the modules inside these subpackages."""
    graph = grimp.build_graph(package, cache_dir=None)
    modules = {m for m in graph.modules if not under or any(m == u or m.startswith(u + ".") for u in under)}
    imports = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in sorted(modules)}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    groups: List[List[str]] = []
    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in imports[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))
    for module in imports:
        if module not in index:
            visit(module)
    chains = []
    for group in groups:
        first = group[0]
        back = next(m for m in imports[first] if m in group)
        chains.append({"modules": group, "chain": [first, *graph.find_shortest_chain(importer=back, imported=first)]})
    return chains
def _described(cycles: List[Dict[str, List[str]]]) -> str:
    return "\n".join(f"{', '.join(c['modules'])} (e.g. {' -> '.join(c['chain'])})" for c in cycles)


def test_no_import_cycle_between_modules_lazy_imports_included():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + _described(cycles)


def test_a_lazy_import_of_a_subclass_by_its_base_class_is_a_cycle(tmp_path):
    """A copy of the package where the searchers' base class imports CMA-ES inside a function."""
    shutil.copytree(ROOT / "evomerge", tmp_path / "evomerge", ignore=shutil.ignore_patterns("__pycache__"))
    base = tmp_path / "evomerge" / "searchers" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _subclasses():\n    from evomerge.searchers import cma\n\n"
                    "    return cma\n")
    found = subprocess.run([sys.executable, "-c", "import json, test_layers; "
                            "print(json.dumps(test_layers.import_cycles(under=['evomerge.searchers'])))"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'tests'}", "PATH": ""})
    assert found.returncode == 0, found.stderr
    [cycle] = json.loads(found.stdout)
    assert {"evomerge.searchers.base", "evomerge.searchers.cma"} <= set(cycle["modules"])
    assert cycle["chain"][0] == cycle["chain"][-1] and set(cycle["chain"]) <= set(cycle["modules"])


def test_a_back_import_inside_outputs_breaks_its_contract(tmp_path):
    """outputs/ has its own layers: a copy where the text rendering imports the plots (which draw on it)
    must fail the lint, which names the arrow; the contract between subpackages alone would not see it."""
    result = _lint_a_copy_with(tmp_path, "outputs/text.py", "\nfrom evomerge.outputs import report  # noqa: E402,F401\n")
    assert result.returncode != 0
    assert "evomerge.outputs.text -> evomerge.outputs.report" in result.stdout


def test_drawing_a_runs_plots_loads_neither_the_merge_nor_the_scorer():
    """report.py reads the store and renders text: a run's plots need no materializer, scorer or lm-eval."""
    code = ("import sys, evomerge.outputs.report; "
            "print(sorted(m for m in sys.modules if m.startswith(('evomerge.merge', 'evomerge.scoring', 'lm_eval'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
