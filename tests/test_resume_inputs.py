"""A resumed run reads the parents, tasks and libraries it started with, or says what changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from evomerge.cli import main
from evomerge.paths import TASKS_DIR
from evomerge.recipe import load_recipe
from evomerge.run import inputs
from evomerge.run.store import RunStore
from evomerge.zoo.recipe import write_demo_recipe


def _copied_run(zoo: dict, tmp_path: Path) -> tuple:
    """A two-evaluation run over copies of the zoo and its tasks, which the test may then change."""
    zoo_copy, tasks_copy = tmp_path / "zoo", tmp_path / "tasks"
    for name in ("base", "pair", "rev", "sort", "shift"):
        shutil.copytree(zoo["dir"] / name, zoo_copy / name)
    shutil.copytree(TASKS_DIR, tasks_copy, ignore=shutil.ignore_patterns("__pycache__"))
    recipe = write_demo_recipe(tmp_path, zoo_copy, budget={"evaluations": 2}, task_paths=[str(tasks_copy)],
                               eval={"limit": 10}, report_tasks=[], confirm=None)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["search", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    return zoo_copy, tasks_copy, run


def _retrained(folder: Path) -> None:
    """The same shapes and headers, other weights: what a parent fine-tuned again looks like."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({name: tensor + 1e-3 for name, tensor in tensors.items()}, path, metadata={"format": "pt"})


def test_a_changed_parent_or_task_is_refused_in_one_line_then_recorded_when_allowed(zoo, tmp_path):
    zoo_copy, tasks_copy, run = _copied_run(zoo, tmp_path)
    _retrained(zoo_copy / "rev")
    data = tasks_copy / "data" / "zoo_sort.search.jsonl"
    data.write_text("".join(data.read_text().splitlines(keepends=True)[1:]))  # one document fewer
    refused = CliRunner().invoke(main, ["resume", str(run), "--evaluations", "3", "--quiet"])
    assert refused.exit_code == 2
    assert refused.output.count("\n") == 1 and "Traceback" not in refused.output
    assert f"parent {zoo_copy / 'rev'} (changed)" in refused.output
    assert "task zoo_sort_search (changed)" in refused.output and "--allow-changed" in refused.output
    assert "zoo_rev_search" not in refused.output and str(zoo_copy / "sort") not in refused.output
    assert RunStore.open(run).evaluations.count() == 2  # nothing was evaluated, nothing lost

    allowed = CliRunner().invoke(main, ["resume", str(run), "--evaluations", "3", "--quiet", "--allow-changed"])
    assert allowed.exit_code == 0, allowed.output
    store = RunStore.open(run)
    [recorded] = store.meta("input_changes")
    assert f"parent {zoo_copy / 'rev'} (changed)" in recorded["changes"] and store.evaluations.count() == 3
    again = CliRunner().invoke(main, ["resume", str(run), "--evaluations", "4", "--quiet"])
    assert again.exit_code == 0, again.output  # the changed inputs are the run's inputs now


def test_only_what_changed_is_named_and_rewritten_bytes_are_no_change(zoo, tmp_path):
    zoo_copy = tmp_path / "zoo"
    for name in ("base", "pair", "rev", "sort", "shift"):
        shutil.copytree(zoo["dir"] / name, zoo_copy / name)
    recipe = load_recipe(write_demo_recipe(tmp_path, zoo_copy))
    before = inputs.fingerprint(recipe)
    (zoo_copy / "rev" / "model.safetensors").write_bytes((zoo_copy / "rev" / "model.safetensors").read_bytes())
    assert inputs.changes(before, inputs.fingerprint(recipe)) == []
    _retrained(zoo_copy / "shift")
    assert inputs.changes(before, inputs.fingerprint(recipe)) == [f"parent {zoo_copy / 'shift'} (changed)"]
    assert inputs.changes(before, {**before, "versions": {**before["versions"], "torch": "0.0"}}) == [
        f"torch {before['versions']['torch']} -> 0.0"]
