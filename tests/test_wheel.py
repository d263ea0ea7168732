"""The wheel works outside the checkout, as `pip install evomerge` or `pipx install evomerge` would use it.

`python -m build` runs on a copy of the checkout's sources (the sdist, then the wheel built from it),
so build litter and a stale egg-info in the checkout cannot change what ships. The wheel goes into a
separate venv that sees this environment's packages through a .pth file, installed with no index and
no dependencies: nothing is downloaded, torch included.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import platformdirs
import pytest
import yaml

import evomerge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "evomerge", "recipes", "notebooks")


def _not_sources(folder: str, names: list) -> set:
    """Byte code, and the zoos built into recipes/: models, not sources."""
    return {n for n in names if n == "__pycache__" or (Path(folder) == ROOT / "recipes" and n.startswith("zoo"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=_not_sources)
        else:
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return next(dist.glob("evomerge-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; this environment's site-packages come after its own."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    return root


def _outside(venv: Path, cwd: Path, *command: str, **environment: str) -> str:
    """Run a command of the venv from `cwd`, with nothing pointing back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EVOMERGE_HOME")}
    result = subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=cwd, env={**env, **environment},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_wheel_carries_the_demo_recipe_the_zoo_tasks_and_the_notebook(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tasks = ROOT / "recipes" / "tasks"
    shipped = ["demo.yaml", "tasks/zoo_data.py"] + [str(p.relative_to(tasks.parent)) for p in tasks.rglob("*")
                                                   if p.suffix in (".yaml", ".jsonl")]
    assert len(shipped) > 20
    assert {f"evomerge/_recipes/{name}" for name in shipped} <= names
    assert "evomerge/_notebooks/quickstart.ipynb" in names
    assert not any(name.endswith((".safetensors", ".bin", ".gguf")) for name in names), "a zoo got into the wheel"
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "evomerge").rglob("*.py")}
    assert modules <= names, f"pyproject.toml's packages miss {sorted(modules - names)}"


def test_the_wheel_carries_its_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(archive.read(f"evomerge-{evomerge.__version__}.dist-info/METADATA").decode())
    assert metadata["Version"] == evomerge.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(c.startswith("Programming Language :: Python :: 3") for c in metadata.get_all("Classifier"))
    assert any(r.startswith("platformdirs") for r in metadata.get_all("Requires-Dist"))


def test_the_installed_command_runs_outside_the_checkout(venv, tmp_path):
    printed = _outside(venv, tmp_path, "python", "-c",
                       "import evomerge, evomerge.paths as p; print(evomerge.__file__, p.TASKS_DIR, p.NOTEBOOK, "
                       "p.DEFAULT_ZOO_DIR, sep='\\n')")
    module, tasks, notebook, zoo = map(Path, printed.splitlines())
    assert module.is_relative_to(venv), "the checkout's evomerge was imported, not the wheel's"
    assert tasks.is_relative_to(venv) and (tasks / "zoo_rev_search.yaml").is_file() and notebook.is_file()
    assert zoo == Path(platformdirs.user_cache_dir("evomerge")) / "zoo"
    assert evomerge.__version__ in _outside(venv, tmp_path, "evomerge", "--version")
    assert "EVOMERGE_HOME" in _outside(venv, tmp_path, "evomerge", "demo", "--help")


def test_the_installed_demo_runs_outside_the_checkout_on_a_zoo_in_evomerge_home(venv, zoo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to(zoo["dir"], target_is_directory=True)  # built already: the demo reuses it
    printed = _outside(venv, tmp_path, "evomerge", "demo", "--evaluations", "1", "--quiet", "--out", "run",
                       EVOMERGE_HOME=str(home))
    assert "| winner (#" in printed
    recipe = yaml.safe_load((home / "demo.yaml").read_text())
    assert recipe["base_model"] == str(home / "zoo" / "base")
    assert all(Path(path).is_relative_to(venv) for path in recipe["evomerge"]["task_paths"])
    assert (tmp_path / "run" / "best.yaml").is_file()
