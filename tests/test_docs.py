"""The docs site builds with `mkdocs build --strict`, so a broken link or a missing page fails the
tests; the recipe reference is generated from the schema, and the bench scripts write their tables
into their pages."""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from evomerge.recipe.schema import EvomergeSpec

ROOT = Path(__file__).resolve().parent.parent


def build(config_dir: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=config_dir,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = build(ROOT, site)
    assert built.returncode == 0, built.stderr[-3000:]
    return site


def test_the_site_builds_strictly_with_every_guide_and_reference_page(site):
    for page in ("guides/first-search", "guides/racing", "reference/recipe", "reference/cli", "reference/api",
                 "benchmarks/racing"):
        assert (site / page / "index.html").is_file(), page


@pytest.mark.parametrize("link, builds", [("page.md", True), ("no-such-page.md", False)])
def test_a_broken_link_fails_the_build(link, builds, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Home\n\nSee [the page]({link}).\n")
    (tmp_path / "docs" / "page.md").write_text("# A page\n")
    (tmp_path / "mkdocs.yml").write_text(  # the site's own settings, on two pages
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nnav: [index.md, page.md]\n"
        f"hooks: [{ROOT / 'docs' / 'hooks' / 'recipe_schema.py'}]\n")
    built = build(tmp_path, tmp_path / "site")
    assert (built.returncode == 0) == builds, built.stderr[-3000:]
    assert builds or link in built.stderr


def test_the_recipe_reference_lists_every_key_of_the_schema(site):
    text = unescape(re.sub(r"<[^>]+>", " ", (site / "reference" / "recipe" / "index.html").read_text()))
    schema = EvomergeSpec.model_json_schema()
    for model in [schema, *schema["$defs"].values()]:
        for key in model.get("properties", {}):
            assert re.search(rf"\s{re.escape(key)}\s", text), key


def _pages():
    spec = importlib.util.spec_from_file_location("bench_pages", ROOT / "bench" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bench_script_replaces_only_its_pages_latest_table(tmp_path):
    pages = _pages()
    (tmp_path / "sync.md").write_text("# Store sync\n\nProse the script keeps.\n")
    day = datetime.date(2026, 12, 7)
    pages.write_table("sync", "| a |\n|---|\n| 1 |", command=["python", "bench/x.py"], docs=tmp_path, today=day)
    pages.write_table("sync", "| a |\n|---|\n| 2 |", command=["python", "bench/x.py", "--n", "3"], docs=tmp_path,
                      today=day)
    text = (tmp_path / "sync.md").read_text()
    assert text.startswith("# Store sync\n\nProse the script keeps.\n")
    assert text.count(pages.START) == 1 and "| 2 |" in text and "| 1 |" not in text
    assert "Measured 2026-12-07 on " in text and "`python bench/x.py --n 3`" in text
