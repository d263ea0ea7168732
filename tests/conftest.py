"""Shared fixtures: the zoo is built once per session (and reused across sessions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.paths import DEFAULT_ZOO_DIR, TASKS_DIR
from evomerge.zoo.recipe import write_demo_recipe


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
def demo_recipe(tmp_path, zoo):
    """Make a demo recipe in tmp_path: `demo_recipe(name="demo.yaml", **evomerge_changes)`."""

    def make(name: str = "demo.yaml", **evomerge) -> Path:
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
