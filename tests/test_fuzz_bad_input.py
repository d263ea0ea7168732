"""Random bad recipes fed to `evomerge search` and `evomerge merge`: every one ends in exit code 2 and
one line starting with "error:", never a traceback, and leaves no run directory (or merged folder).

Mutations of the demo recipe (keys dropped, unknown keys, values of the wrong type or out of range)
and odd files (empty, not a mapping, tabs, anchors, several documents, binary junk). A mutation that
is not certainly invalid could be a recipe that really searches or merges, so it is left out
(`assume`); what is certainly invalid is judged here from the demo recipe alone, never by evomerge's
own checks, so a check that lets a bad recipe through fails the test.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import yaml
from click.testing import CliRunner

from evomerge.cli import main
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


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "mapping", list: "list", str: "text", type(None): "none"}.get(type(value), "other")


def _number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# (the demo's kind, the mutated value's kind) that no reading of a recipe accepts; lax parsing may
# still read a bool or numeric text as a number, a single text as a list, a text or a bool as a
# section's short form, and any kind may be optional (None), so those are never counted
_FOREIGN = {("text", "number"), ("text", "bool"), ("text", "list"), ("text", "mapping"), ("number", "mapping"),
            ("number", "list"), ("list", "number"), ("list", "bool"), ("list", "mapping"), ("mapping", "number"),
            ("mapping", "list")}
_FREE_FORM = {"parameters"}  # mergekit's parameters: any name
UNREAD = {"search": set(), "merge": {"searcher"}}  # the searcher's options are its own, read only by a search


def _certainly_invalid(command: str, demo: Any, recipe: Any, key: Any = None) -> bool:
    """Whether `recipe` differs from `demo` in a way no valid recipe can, in a part `command` reads: a key the
    demo's mapping lacks (outside mergekit's free-form parameters), a value of a foreign kind, non-numeric text or
    a non-finite number where the demo has a number. Judged from the demo alone, not by evomerge's checks."""
    if key in UNREAD[command]:
        return False
    kinds = (_kind(demo), _kind(recipe))
    if kinds in _FOREIGN:
        return kinds != ("number", "list") or key != "weight"  # a weight may be a gradient (a list)
    if kinds == ("number", "number"):
        return not math.isfinite(recipe)
    if kinds == ("number", "text"):
        return not _number_text(recipe)
    if kinds == ("mapping", "mapping"):
        if key not in _FREE_FORM and set(recipe) - set(demo):
            return True
        return any(_certainly_invalid(command, demo[k], recipe[k], k) for k in recipe.keys() & demo.keys())
    if kinds == ("list", "list"):
        return any(_certainly_invalid(command, d, r, key) for d, r in zip(demo, recipe))
    return False


def _assert_refused_in_one_line(command: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        recipe = folder / "recipe.yaml"
        recipe.write_bytes(content)
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
    def check(content):
        assume(_certainly_invalid(command, demo, yaml.safe_load(content)))
        _assert_refused_in_one_line(command, content)

    check()


# each of these got past the checks and failed (or merged, or searched from the range's middle) later
KNOWN_BAD = {
    "an infinite range": lambda r: r["evomerge"]["search"][0].update(range=[0.0, float("inf")]),
    "a NaN weight": lambda r: r["models"][0]["parameters"].update(weight=float("nan")),
    "a weight that is a word": lambda r: r["models"][0]["parameters"].update(weight="abc"),  # was the middle
    "a seed past numpy's 2**32 - 1": lambda r: r["evomerge"].update(seed=2**40),
    "a negative seed": lambda r: r["evomerge"].update(seed=-1),
    "an unknown dtype": lambda r: r.update(dtype="float8"),  # merge: after mergekit's progress bars
    "no base_model for task arithmetic": lambda r: r.pop("base_model"),  # merge: after mergekit's progress bars
    "a misspelt key in a model entry": lambda r: r["models"][0].update(paramters=r["models"][0].pop("parameters")),
}


@pytest.mark.parametrize("command", ["search", "merge"])
@pytest.mark.parametrize("change", KNOWN_BAD.values(), ids=KNOWN_BAD.keys())
def test_recipes_that_once_got_past_the_checks_are_refused_in_one_line(demo, command, change):
    _assert_refused_in_one_line(command, _changed(demo, change))


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
