"""What cannot work for any candidate is refused before the first one, in one line that names the
key and the fix: a tokenizer without a chat template while the template is on (a mergekit-evolve
config turns it on by default), a model that is neither a folder nor on the Hub, an unknown task."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from evomerge.cli import main
from evomerge.run.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _evolve_config(models) -> dict:
    """A mergekit-evolve config as its users write it: its defaults turn the chat template on."""
    return {"genome": {"models": [str(m) for m in models], "merge_method": "linear", "layer_granularity": 2},
            "tasks": [{"name": "zoo_pair_search", "metric": "acc,none"}], "limit": 8}


def _search(config: Path, run: Path, tasks_dir: Path):
    return CliRunner().invoke(main, ["search", str(config), "--out", str(run), "--quiet", "--max-fevals", "2",
                                     "--task-search-path", str(tasks_dir)])


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_mergekit_evolve_config_on_a_tokenizer_without_a_chat_template_is_refused_before_any_candidate(
        zoo, tasks_dir, write_recipe, tmp_path):
    config = write_recipe(_evolve_config(zoo["dir"] / m for m in ("pair", "rev", "sort")), "evolve.yml")
    run = tmp_path / "run"
    line = _one_error_line(_search(config, run, tasks_dir))
    assert f"{config}: apply_chat_template:" in line
    assert "mergekit-evolve's default" in line and "apply_chat_template: false" in line
    assert not run.exists() or not RunStore.open(run).evaluations.finished()


def test_a_mergekit_evolve_config_whose_tokenizer_has_a_template_is_searched_with_it(zoo, tasks_dir, write_recipe,
                                                                                     tmp_path):
    models = []
    for name in ("pair", "rev", "sort"):  # mergekit's donor, with no base model: any of them
        models.append(shutil.copytree(zoo["dir"] / name, tmp_path / name))
        settings = json.loads((models[-1] / "tokenizer_config.json").read_text())
        (models[-1] / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": CHAT_TEMPLATE}))
    config = write_recipe(_evolve_config(models), "evolve.yml")
    result = _search(config, tmp_path / "run", tasks_dir)
    assert result.exit_code == 0, result.output
    finished = RunStore.open(tmp_path / "run").evaluations.finished()
    assert len(finished) == 2 and all(e.ok for e in finished)


def test_an_evomerge_recipe_that_applies_a_template_the_tokenizer_lacks_is_refused(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"apply_chat_template": True, "limit": 4})
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    line = _one_error_line(result)
    assert "evomerge.eval.apply_chat_template:" in line and "chat template" in line
    assert "apply_chat_template: false" in line
    assert not (tmp_path / "run").exists()


def test_plan_on_a_fresh_clone_offline_names_the_folder_it_looked_for(tmp_path):
    """`evomerge plan recipes/demo.yaml` before the zoo is built: `zoo/base` is no folder beside the
    recipe, so it would be a Hub id, and the Hub is offline."""
    shutil.copy(ROOT / "recipes" / "demo.yaml", tmp_path / "demo.yaml")
    shutil.copytree(ROOT / "recipes" / "tasks", tmp_path / "tasks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this checkout's evomerge
    result = subprocess.run([sys.executable, "-m", "evomerge.cli", "plan", "demo.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'demo.yaml'}: base_model: ")
    assert str(tmp_path / "zoo" / "base") in lines[0] and "offline" in lines[0]


def test_a_model_on_the_hub_is_taken_and_one_that_is_not_there_is_refused(zoo, hub, without_xet, demo_recipe,
                                                                          tmp_path):
    from evomerge.outputs.hub import push_folder

    push_folder(zoo["dir"] / "rev", "someone/rev")
    recipe = demo_recipe()
    data = yaml.safe_load(recipe.read_text())
    data["models"][1]["model"] = "someone/rev"
    data["models"][2]["model"] = "someone/sort"  # never pushed
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    line = _one_error_line(CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run")]))
    assert "models[2].model:" in line and str(tmp_path / "someone" / "sort") in line
    assert "'someone/sort' is not a model on the Hub" in line and "models[1]" not in line


def test_an_unknown_report_task_is_refused_with_its_key_before_any_candidate(demo_recipe, tmp_path):
    recipe = demo_recipe(report_tasks=["zoo_pair_report", "zoo_rev_reprot"])
    line = _one_error_line(CliRunner().invoke(main, ["search", str(recipe), "--out", str(tmp_path / "run"),
                                                     "--quiet"]))
    assert "evomerge.report_tasks: unknown lm-eval task 'zoo_rev_reprot' (did you mean 'zoo_rev_report'?)" in line
    assert not (tmp_path / "run").exists()
