"""Bad input: one line naming the file and the key, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.run.store import RunStore


def _edit(recipe: Path, change) -> Path:
    data = yaml.safe_load(recipe.read_text())
    change(data)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


def _copy_model(zoo, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(zoo["dir"] / "rev", target)
    return target


def _use_model(recipe: Path, folder: Path) -> Path:
    return _edit(recipe, lambda d: d["models"][1].update(model=str(folder)))


def _search(recipe: Path, tmp_path: Path):
    return ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]


def _ev(**changes):
    return lambda d: d["evomerge"].update(changes)


def _gene(**changes):
    return lambda d: d["evomerge"]["search"][0].update(changes)


def case_malformed_yaml(recipe, zoo, tmp_path):
    recipe.write_text("merge_method: task_arithmetic\nmodels: [\n")
    return _search(recipe, tmp_path), "line 3"


def case_recipe_file_missing(recipe, zoo, tmp_path):
    return _search(tmp_path / "nowhere.yaml", tmp_path), "recipe file not found"


def case_not_a_mapping(recipe, zoo, tmp_path):
    recipe.write_text("- merge_method\n- models\n")
    return _search(recipe, tmp_path), "expected a mapping"


def case_unknown_top_level_key(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: d.update(merge_methd=d.pop("merge_method")))
    return _search(recipe, tmp_path), "merge_methd: unknown key (did you mean 'merge_method'?)"


def case_unknown_evomerge_key(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: d["evomerge"].update(serch=d["evomerge"].pop("search")))
    return _search(recipe, tmp_path), "evomerge.serch: unknown key (did you mean 'search'?)"


def case_wrong_type(recipe, zoo, tmp_path):
    _edit(recipe, _gene(layer_groups="two"))
    return _search(recipe, tmp_path), "evomerge.search[0].layer_groups: expected a number of layer groups"


def case_missing_model_folder(recipe, zoo, tmp_path):
    _use_model(recipe, tmp_path / "no-such-model")
    return _search(recipe, tmp_path), "models[1].model: model folder not found"


def case_model_folder_without_weights(recipe, zoo, tmp_path):
    folder = _copy_model(zoo, tmp_path)
    (folder / "model.safetensors").unlink()
    _use_model(recipe, folder)
    return _search(recipe, tmp_path), "models[1].model: no weights in"


def case_corrupted_safetensors(recipe, zoo, tmp_path):
    folder = _copy_model(zoo, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _use_model(recipe, folder)
    return _search(recipe, tmp_path), "models[1].model: unreadable safetensors file"


def case_malformed_model_config(recipe, zoo, tmp_path):
    folder = _copy_model(zoo, tmp_path)
    (folder / "config.json").write_text("{")
    _use_model(recipe, folder)
    return _search(recipe, tmp_path), "models[1].model: malformed"


def case_pickle_weights_without_flag(recipe, zoo, tmp_path):
    folder = _copy_model(zoo, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _use_model(recipe, folder)
    return _search(recipe, tmp_path), "only pickle weights (pytorch_model.bin), which can run code when loaded"


def case_unknown_merge_method(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: d.update(merge_method="task_arithmetc"))
    return _search(recipe, tmp_path), "merge_method: unknown merge method 'task_arithmetc' (did you mean 'task_arithmetic'?)"


def case_unknown_parameter(recipe, zoo, tmp_path):
    _edit(recipe, _gene(parameter="wieght"))
    return _search(recipe, tmp_path), "evomerge.search[0].parameter: task_arithmetic has no parameter 'wieght' (did you mean 'weight'?)"


def case_searched_model_not_in_recipe(recipe, zoo, tmp_path):
    _edit(recipe, _gene(models=[str(tmp_path / "other")]))
    return _search(recipe, tmp_path), "evomerge.search[0].models[0]: model"


def case_unknown_task(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: d["evomerge"]["tasks"][0].update(name="zoo_pear_search"))
    return _search(recipe, tmp_path), "evomerge.tasks: unknown lm-eval task 'zoo_pear_search' (did you mean 'zoo_pair_search'?)"


def case_unknown_metric(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: d["evomerge"]["tasks"][0].update(metric="exact_match"))
    return _search(recipe, tmp_path), "evomerge.tasks[0].metric: task 'zoo_pair_search' does not produce metric 'exact_match'"


def case_tasks_folder_missing(recipe, zoo, tmp_path):
    _edit(recipe, _ev(task_paths=[str(tmp_path / "no-tasks-here")]))
    return _search(recipe, tmp_path), "evomerge.task_paths[0]: expected a folder of lm-eval task YAML files"


def case_no_tasks(recipe, zoo, tmp_path):
    _edit(recipe, _ev(tasks=[]))
    return _search(recipe, tmp_path), "evomerge.tasks: expected lm-eval tasks"


def case_budget_of_zero(recipe, zoo, tmp_path):
    _edit(recipe, _ev(budget={"evaluations": 0}))
    return _search(recipe, tmp_path), "evomerge.budget.evaluations: Input should be greater than 0"


def case_inverted_range(recipe, zoo, tmp_path):
    _edit(recipe, _gene(range=[1.5, 0.0]))
    return _search(recipe, tmp_path), "evomerge.search[0].range: expected [low, high], finite, with low < high, got [1.5, 0.0]"


def case_negative_noise_range(recipe, zoo, tmp_path):
    _edit(recipe, _ev(noise={"range": [-0.01, 0.01]}))
    return _search(recipe, tmp_path), "evomerge.noise.range: expected a non-negative range"


def case_too_many_layer_groups(recipe, zoo, tmp_path):
    _edit(recipe, _gene(layer_groups=9))
    return _search(recipe, tmp_path), "evomerge.search[0].layer_groups: 9 layer groups, but the models have 4 layers"


def case_layer_ranges_with_a_gap(recipe, zoo, tmp_path):
    _edit(recipe, _gene(layer_groups=[[0, 1], [2, 4]]))
    return _search(recipe, tmp_path), "evomerge.search[0].layer_groups: expected a number of layer groups or contiguous layer ranges"


def case_layer_ranges_short_of_the_last_layer(recipe, zoo, tmp_path):
    _edit(recipe, _gene(layer_groups=[[0, 1], [1, 3]]))
    return _search(recipe, tmp_path), "evomerge.search[0].layer_groups: the layer ranges end at layer 3, but the models have 4 layers"


def case_nothing_to_search(recipe, zoo, tmp_path):
    _edit(recipe, _ev(search=[]))
    return _search(recipe, tmp_path), "evomerge.search: expected at least one searched parameter"


def case_unknown_searcher(recipe, zoo, tmp_path):
    _edit(recipe, _ev(searcher={"name": "cmaes"}))
    return _search(recipe, tmp_path), "evomerge.searcher.name: unknown searcher 'cmaes' (did you mean 'cma'?)"


def case_unknown_searcher_option(recipe, zoo, tmp_path):
    _edit(recipe, _ev(searcher={"name": "cma", "popsise": 8}))
    return _search(recipe, tmp_path), "evomerge.searcher.popsise: unknown key (did you mean 'popsize'?)"


def case_fitness_not_module_function(recipe, zoo, tmp_path):
    _edit(recipe, _ev(fitness="my_fitness.score"))
    return _search(recipe, tmp_path), "evomerge.fitness: expected 'module:function'"


def case_fitness_module_missing(recipe, zoo, tmp_path):
    _edit(recipe, _ev(fitness="no_such_module:score"))
    return _search(recipe, tmp_path), "evomerge.fitness: cannot import 'no_such_module'"


def case_required_parameter_unset(recipe, zoo, tmp_path):
    _edit(recipe, lambda d: (d["models"][0].pop("parameters"), d["evomerge"].update(search=[{"parameter": "density", "range": [0.1, 1.0]}])))
    return _search(recipe, tmp_path), "mergekit cannot merge the recipe: Missing required parameter weight"


def case_confirm_task_is_a_search_task(recipe, zoo, tmp_path):
    _edit(recipe, _ev(confirm={"top": 2, "tasks": ["zoo_rev_confirm", "zoo_rev_search"]}))
    return _search(recipe, tmp_path), ("evomerge.confirm.tasks[1]: expected tasks the search and the report do not "
                                       "use, got 'zoo_rev_search', a search task")


def case_confirm_top_zero(recipe, zoo, tmp_path):
    _edit(recipe, _ev(confirm={"top": 0, "tasks": ["zoo_rev_confirm"]}))
    return _search(recipe, tmp_path), "evomerge.confirm.top: Input should be greater than 0"


def case_resume_a_folder_that_is_not_a_run(recipe, zoo, tmp_path):
    (tmp_path / "not-a-run").mkdir()
    return ["search", "--resume", str(tmp_path / "not-a-run")], "not a run directory (no run.db)"


def case_search_into_an_existing_run(recipe, zoo, tmp_path):
    RunStore.create(tmp_path / "run", {"recipe_text": "", "recipe_path": ""}).close()
    return _search(recipe, tmp_path), "a run already exists here; pass --resume"


CASES = {name[len("case_"):]: function for name, function in sorted(globals().items()) if name.startswith("case_")}


SLOW_CASES = {"unknown_task"}  # lm-eval indexes all its own tasks before it can say a name is unknown


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in sorted(CASES)])
def test_bad_input_is_one_line_naming_file_and_key(case, demo_recipe, zoo, tmp_path):
    recipe = demo_recipe()
    argv, expected = CASES[case](recipe, zoo, tmp_path)
    result = CliRunner().invoke(main, argv)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() or case == "search_into_an_existing_run"


def test_debug_shows_the_traceback(demo_recipe, tmp_path):
    recipe = _edit(demo_recipe(), lambda d: d.update(merge_method="nope"))
    result = CliRunner().invoke(main, ["--debug", "search", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and result.exc_info is not None


def test_every_problem_found_before_loading_is_reported_at_once(demo_recipe, tmp_path):
    recipe = _edit(demo_recipe(), lambda d: (d["evomerge"].update(searcher={"name": "cmaes"}, budget=None),
                                             d["evomerge"]["search"][0].update(parameter="wieght")))
    result = CliRunner().invoke(main, _search(recipe, tmp_path))
    [line] = result.output.strip().splitlines()
    assert result.exit_code == 2 and line.startswith(f"error: {recipe}: 3 problems: ")
    for expected in ("evomerge.budget: expected a budget", "evomerge.searcher.name: unknown searcher 'cmaes'",
                     "evomerge.search[0].parameter: task_arithmetic has no parameter 'wieght'"):
        assert expected in line, expected
    assert not (tmp_path / "run").exists()
