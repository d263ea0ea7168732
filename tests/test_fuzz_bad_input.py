"""Random bad recipes fed to `evomerge search` and `evomerge merge`: every one ends in exit code 2 and
one line starting with "error:", never a traceback, and leaves no run directory (or merged folder).

Mutations of the demo recipe (keys dropped, unknown keys, values of the wrong type or out of range)
and odd files (empty, not a mapping, tabs, anchors, several documents, binary junk). A mutation that
passes the checks made before anything loads would start a real search or merge; such examples are
left out (`assume`), so every example is cheap.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import yaml
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.parents import check_parents
from evomerge.recipe.space_factory import build_space
from evomerge.recipe.validate import check_search
from evomerge.zoo.recipe import write_demo_recipe

hypothesis = pytest.importorskip("hypothesis", reason="the test extras install hypothesis: pip install -e '.[test]'")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])

WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def demo(zoo, tmp_path_factory) -> dict:
    """The demo recipe with absolute paths, as a dict to mutate."""
    return yaml.safe_load(write_demo_recipe(tmp_path_factory.mktemp("demo"), zoo["dir"]).read_text())


def _places(node: Any, path: Tuple = ()) -> List[Tuple]:
    """The path of every key and list item in the recipe."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        found.append(path + (key,))
        found += _places(value, path + (key,))
    return found


def _at(node: Any, path: Tuple) -> Any:
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated(draw, base: dict) -> bytes:
    """The recipe with one to three keys dropped, added or given a wrong value."""
    recipe = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        places = _places(recipe)
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent, key = _at(recipe, path[:-1]), path[-1]
        change = draw(st.sampled_from(["drop", "unknown key", "wrong value"]))
        if change == "drop":
            del parent[key]
        elif change == "unknown key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "weigth", "evomerge", "models", "1"]))] = draw(WRONG_VALUES)
        else:
            parent[key] = draw(WRONG_VALUES)
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).encode()


def odd_files(base: dict) -> st.SearchStrategy[bytes]:
    text = yaml.safe_dump(base, sort_keys=False)
    return st.one_of(
        st.sampled_from([
            b"", b"# only a comment\n", b"- merge_method\n- models\n", b"42\n", b"just words\n", b"~\n",
            text.replace("  ", "\t").encode(),  # tabs for indentation
            (text + "---\nmerge_method: linear\n").encode(),  # two documents
            b"merge_method: &m task_arithmetic\nmodels: *m\n",  # an alias where a list belongs
            b"evomerge: &e {search: *e}\nmerge_method: linear\n",  # a recursive alias
            b"? [a, b]\n: 1\n",  # a key that is a list
        ]),
        st.binary(max_size=64),
    )


def _passes_checks_before_loading(command: str, path: Path) -> bool:
    """Whether the recipe gets past everything checked before models or tasks load (then it would
    really search or merge). Anything but an EvomergeError counts as failing: the command must still
    say it in one line."""
    try:
        recipe = load_recipe(path)
        if command == "search":
            check_search(recipe)
        else:
            check_parents(recipe.merge, recipe.path)
            build_space(recipe).starting_point()
    except Exception:  # noqa: BLE001 - EvomergeError or a bug the command must not show as a traceback
        return False
    return True


def _assert_refused_in_one_line(command: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        recipe = folder / "recipe.yaml"
        recipe.write_bytes(content)
        assume(not _passes_checks_before_loading(command, recipe))
        out = folder / "out"
        argv = (["search", str(recipe), "--out", str(out), "--quiet"] if command == "search"
                else ["merge", str(recipe), str(out)])
        result = CliRunner().invoke(main, argv)
        lines = result.output.strip().splitlines()
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}"), result.output  # it names the file
        assert "Traceback" not in result.output
        assert not out.exists()


def _changed(recipe: dict, change) -> bytes:
    recipe = copy.deepcopy(recipe)
    change(recipe)
    return yaml.safe_dump(recipe, sort_keys=False).encode()


@pytest.mark.parametrize("command", ["search", "merge"])
def test_mutated_recipes_are_refused_in_one_line(demo, command):
    @FUZZ
    @given(content=mutated(demo))
    # each of these got past the checks and failed (or merged, or searched from the range's middle) later:
    @example(content=_changed(demo, lambda r: r["evomerge"]["search"][0].update(range=[0.0, float("inf")])))
    @example(content=_changed(demo, lambda r: r["models"][0]["parameters"].update(weight=float("nan"))))
    @example(content=_changed(demo, lambda r: r["models"][0]["parameters"].update(weight="abc")))  # was the middle
    @example(content=_changed(demo, lambda r: r["evomerge"].update(seed=2**40)))  # numpy's seeds end at 2**32 - 1
    @example(content=_changed(demo, lambda r: r["evomerge"].update(seed=-1)))
    @example(content=_changed(demo, lambda r: r.update(dtype="float8")))  # merge: after mergekit's progress bars
    def check(content):
        _assert_refused_in_one_line(command, content)

    check()


@pytest.mark.parametrize("command", ["search", "merge"])
def test_odd_files_are_refused_in_one_line(demo, command):
    @FUZZ
    @given(content=odd_files(demo))
    @example(content=b"models: &m [*m]\nmerge_method: linear\n")  # was a RecursionError
    @example(content=b"1: 2\n")  # a key that is a number: was a TypeError
    @example(content=b"merge_method: task_arithmetic\x00\n")  # was two lines
    @example(content="merge_method: \u00e9t\u00e9\n".encode("latin-1"))  # not UTF-8: was a UnicodeDecodeError
    def check(content):
        _assert_refused_in_one_line(command, content)

    check()
