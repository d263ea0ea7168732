"""Shared fixtures: the zoo is built once per session (and reused across sessions)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from evomerge.paths import TASKS_DIR
from evomerge.zoo.recipe import write_demo_recipe


def pytest_report_header(config) -> str:
    """What a failure on another machine needs: the versions CI installed and torch's CPU kernels."""
    from importlib.metadata import version

    import torch

    packages = ("torch", "transformers", "mergekit", "lm_eval", "optuna", "cma")
    return ("evomerge dependencies: " + ", ".join(f"{name} {version(name)}" for name in packages)
            + f"; torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}")


RAY_FILES = {"test_workers.py", "test_ray_placement.py"}

if "PYTEST_XDIST_WORKER" in os.environ:  # two workers on two cores: one thread each, their subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items) -> None:
    """A file's tests run on one worker (its module fixtures are built once); the Ray files on the same one."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_FILES else name))


def _zoo(family: str) -> dict:
    from filelock import FileLock

    from evomerge.zoo.build import FAMILIES, build_zoo, zoo_dir

    with FileLock(Path(tempfile.gettempdir()) / f"evomerge-zoo-{family}.lock"):  # one worker builds, the other waits
        manifest = dict(build_zoo(zoo_dir(family), FAMILIES[family]))
    manifest["dir"] = zoo_dir(family)
    manifest["family"] = family
    return manifest


@pytest.fixture(scope="session")
def zoo() -> dict:
    """The llama zoo's manifest, with `dir` added; built on first use, cached on disk."""
    return _zoo("llama")


@pytest.fixture(scope="session")
def tied_zoo() -> dict:
    """The tied zoo: tied embeddings and grouped-query attention, as most small real models."""
    return _zoo("tied")


@pytest.fixture(scope="session", params=["llama", "tied"])
def any_zoo(request) -> dict:
    """Each zoo family in turn, for tests that must hold for every model shape."""
    return request.getfixturevalue("tied_zoo" if request.param == "tied" else "zoo")


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


LIGHT_CONFIRM = {"top": 1, "hold_back": 0.05}


@pytest.fixture
def demo_recipe(tmp_path, zoo):
    """Make a demo recipe in tmp_path: `demo_recipe(name="demo.yaml", **evomerge_changes)`. `confirm=None`
    drops the demo's confirmation tasks for a light crowning (one finalist, 5% of the search documents
    held back): for tests about something else, which the full crowning would only slow down."""

    def make(name: str = "demo.yaml", **evomerge) -> Path:
        if "confirm" in evomerge and evomerge["confirm"] is None:
            evomerge["confirm"] = LIGHT_CONFIRM
        return write_demo_recipe(tmp_path, zoo["dir"], name, **evomerge)

    return make


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub on 127.0.0.1 (tests/fake_hub.py); HF_ENDPOINT and HF_TOKEN point huggingface_hub at it."""
    from fake_hub import TOKEN, FakeHub, serve

    fake = FakeHub(token=TOKEN)
    with serve(fake) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield fake


@pytest.fixture
def without_xet(monkeypatch):
    """Upload LFS files over the LFS batch API rather than hf_xet's storage protocol, which the fake
    does not speak. HF_HUB_DISABLE_XET is huggingface_hub's documented switch, read at import."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
