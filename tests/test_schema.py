"""`evomerge schema`: the JSON Schema an editor checks a recipe with. It accepts every recipe the repository
and its docs show, refuses a misspelt key, agrees with the loader, and knows a searcher registered by a plugin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.recipe.json_schema import recipe_json_schema
from evomerge.recipe.loading import load_recipe
from evomerge.searchers import SEARCHERS, Searcher, SearcherOptions, register, searcher_options

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo.yaml"
SHIPPED = ROOT / "docs" / "evomerge.schema.json"
RECIPES = sorted([*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "tests" / "examples").glob("*.yaml")])  # not tasks/
ELISION = "..."  # what a docs example leaves out: `tasks: [...]`, `{name: ga, ...}`


def _documents(text: str) -> list:
    """A recipe file's YAML documents: one, or a mergekit-multi file's stages."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _errors(schema: dict, text: str) -> list:
    """Each document checked against the schema on its own, as an editor checks a multi-document file."""
    validator = jsonschema.Draft7Validator(schema)
    return [f"documents[{i}]{''.join(f'.{key}' for key in e.absolute_path)}: {e.message}"
            for i, document in enumerate(_documents(text)) for e in validator.iter_errors(document)]


def _docs_recipes() -> list:
    """The YAML blocks of README.md and docs/ that show a recipe (a `merge_method` or an `evomerge:` key)."""
    blocks = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for block in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
            documents = _documents(block.group(1))
            if any(isinstance(d, dict) and {"merge_method", "evomerge"} & set(d) for d in documents):
                line = text.count("\n", 0, block.start()) + 1
                blocks.append(pytest.param(block.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return blocks


def _without_elisions(node):
    if isinstance(node, dict):
        return {k: _without_elisions(v) for k, v in node.items() if ELISION not in (k, v)}
    if isinstance(node, list):
        return [_without_elisions(v) for v in node if v != ELISION]
    return node


@pytest.fixture(scope="module")
def schema() -> dict:
    return recipe_json_schema()


def test_the_schema_is_valid_json_schema_in_the_draft_editors_check_with(schema):
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft7Validator
    jsonschema.Draft7Validator.check_schema(schema)
    assert "document by document" in schema["description"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_in_the_repository_is_valid(schema, recipe):
    assert _errors(schema, recipe.read_text(encoding="utf-8")) == []


def test_a_multi_stage_recipe_is_checked_document_by_document(schema):
    text = (ROOT / "tests" / "examples" / "multi_stage.yaml").read_text(encoding="utf-8")
    assert len(_documents(text)) > 1 and _errors(schema, text) == []
    first, *rest = text.split("\n---\n")
    misspelt = "\n---\n".join([first.replace("merge_method:", "merge_methd:", 1), *rest])
    assert [e.split(": ")[0] for e in _errors(schema, misspelt)] == ["documents[0]"] * 2  # unknown key, missing one


def test_the_docs_show_recipes_to_check():
    assert any("README.md" in block.id for block in _docs_recipes())


@pytest.mark.parametrize("text", _docs_recipes())
def test_every_recipe_the_docs_show_is_valid(schema, text):
    """A block that shows only part of a recipe (no `merge_method`) is checked for the keys it has."""
    documents = [_without_elisions(d) for d in _documents(text)]
    partial = {**schema, "required": []} if not any("merge_method" in d for d in documents) else schema
    assert _errors(partial, yaml.safe_dump_all(documents)) == []


def _demo(edit=None) -> str:
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    if edit:
        edit(data)
    return yaml.safe_dump(data, sort_keys=False)


def _section(**changes):
    return lambda d: d["evomerge"].update(changes)


def _searcher(**changes):
    return lambda d: d["evomerge"]["searcher"].update(changes)


MISSPELT = {
    "evomerge section": lambda d: d["evomerge"].update(serch=d["evomerge"].pop("search")),
    "searcher option": lambda d: d["evomerge"]["searcher"].update(popsiz=d["evomerge"]["searcher"].pop("popsize")),
    "top-level key": lambda d: d.update(merge_methd=d.pop("merge_method")),
    "model entry": lambda d: d["models"][0].update(paramters=d["models"][0].pop("parameters")),
}


@pytest.mark.parametrize("edit", MISSPELT.values(), ids=MISSPELT)
def test_a_misspelt_key_is_refused_by_the_printed_schema(edit, tmp_path):
    """Through the command's own output, printed and written to a file, as an editor reads it."""
    printed = CliRunner().invoke(main, ["schema"])
    assert printed.exit_code == 0, printed.output
    written = CliRunner().invoke(main, ["schema", "--out", str(tmp_path / "recipe.schema.json")])
    assert written.exit_code == 0 and (tmp_path / "recipe.schema.json").read_text() == printed.output
    schema = json.loads(printed.output)
    assert _errors(schema, _demo()) == [] and _errors(schema, _demo(edit)) != []


def test_the_shipped_schema_is_what_the_command_prints():
    """docs/evomerge.schema.json is generated (`evomerge schema --out docs/evomerge.schema.json`): it cannot drift."""
    assert SHIPPED.read_text(encoding="utf-8") == CliRunner().invoke(main, ["schema"]).output


def _loader_accepts(text: str) -> bool:
    """What a search checks of a recipe before anything loads: the file, then the searcher's options."""
    try:
        searcher_options(load_recipe(DEMO, text=text).spec.searcher, source=DEMO)
    except EvomergeError:
        return False
    return True


AGREEMENT = {
    "the demo": None,
    "another searcher with its options": _section(searcher={"name": "ga", "population": 6, "differential": {"f": 0.4}}),
    "the default searcher unnamed": _section(searcher={"popsize": 6}),
    "another searcher's option": _section(searcher={"name": "ga", "popsize": 6}),
    "an unknown searcher": _searcher(name="cmaes"),
    "a searcher option of the wrong type": _searcher(popsize="eight"),
    "racing switched on": _section(eval={"racing": True}),
    "a tracker switched on": _section(track={"mlflow": True, "wandb": False}),
    "layer ranges": lambda d: d["evomerge"]["search"][0].update(layer_groups=[[0, 1], [1, 2]]),
    "no layer groups": lambda d: d["evomerge"]["search"][0].update(layer_groups=0),
    "a range with a word": lambda d: d["evomerge"]["search"][0].update(range=[0.0, "high"]),
    "a budget of nothing": _section(budget={"evaluations": 0}),
    "an unknown merge method": lambda d: d.update(merge_method="task_arithmatic"),
    "a model as a mapping": lambda d: d["models"][0].update(model={"model": {"path": d["models"][0]["model"]}}),
    "a stage name": lambda d: d.update(name="final"),
    "a stage name with a space": lambda d: d.update(name="the final"),
}


@pytest.mark.parametrize("edit", AGREEMENT.values(), ids=AGREEMENT)
def test_the_schema_accepts_what_the_loader_accepts(schema, edit):
    text = _demo(edit)
    assert (_errors(schema, text) == []) == _loader_accepts(text)


class _StepOptions(SearcherOptions):
    step: float = 0.1


@pytest.fixture
def plugin_searcher():
    """A third-party searcher, registered after evomerge's types were built."""

    @register("stepper")
    class Stepper(Searcher):
        """Steps one gene at a time."""

        Options = _StepOptions

    yield Stepper
    del SEARCHERS["stepper"]


def test_a_searcher_registered_by_a_plugin_is_in_the_schema(plugin_searcher):
    schema = recipe_json_schema()
    for searcher, valid in [({"name": "stepper", "step": 0.2}, True), ({"name": "stepper", "stp": 0.2}, False),
                            ({"name": "stepper", "popsize": 4}, False)]:
        text = _demo(_section(searcher=searcher))
        assert (_errors(schema, text) == []) == valid == _loader_accepts(text), searcher


def _keys_of(node, definitions: dict, seen: set):
    """Every (model, key, field) of the object types `node` reaches through the schema's references."""
    if isinstance(node, list):
        for item in node:
            yield from _keys_of(item, definitions, seen)
    elif isinstance(node, dict):
        ref = node.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in seen:
            seen.add(ref)
            for key, field in definitions[ref].get("properties", {}).items():
                yield ref, key, field
            yield from _keys_of(definitions[ref], definitions, seen)
        for value in node.values():
            yield from _keys_of(value, definitions, seen)


def test_every_key_of_the_section_says_what_it_does_for_an_editor_to_show(schema):
    """Descriptions are what an editor's hover and the recipe reference show. mergekit's model references
    (inside `genome.models`) are mergekit's types, described by mergekit or not at all."""
    mergekit_types = {"ModelReference", "ModelPath"}
    keys = [(model, key, field) for model, key, field in _keys_of(schema["properties"]["evomerge"],
                                                                  schema["definitions"], set(mergekit_types))]
    assert {model for model, _, _ in keys} >= {"EvomergeSpec", "GeneSpec", "RoutingSpec", "GenomeSpec",
                                               "RacingSpec", "WandbSpec", "CMAESOptions", "GeneticAlgorithmOptions",
                                               "LLMSearchOptions"}
    assert [f"{model}.{key}" for model, key, field in keys if not field.get("description")] == []
