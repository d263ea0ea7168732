"""A search that survives: kill -9 and resume, SIGTERM, failing candidates, bad parents."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.merge import apply, kernels
from evomerge.run.start import SearchOptions, resume_search, start_search
from evomerge.run.store import RunStore
from evomerge.run.store.schema import FORMAT
from evomerge.run_options import RunOptions

BLOCKING_FITNESS = textwrap.dedent('''
    import os
    import time

    calls = 0

    def score(model, tokenizer):
        """Blocks at call EVOMERGE_TEST_BLOCK_AT (after touching EVOMERGE_TEST_MARKER), so a test can
        stop the run at exactly that candidate; without those variables it is an ordinary fitness."""
        global calls
        calls += 1
        if calls == int(os.environ.get("EVOMERGE_TEST_BLOCK_AT", 0)):
            open(os.environ["EVOMERGE_TEST_MARKER"], "w").close()
            time.sleep(600)
        return 0.0
''')
FLAKY_FITNESS = textwrap.dedent('''
    calls = 0

    def score(model, tokenizer):
        global calls
        calls += 1
        if calls % 4 == 2:
            raise RuntimeError("the custom fitness failed")
        if calls % 4 == 3:
            return float("nan")
        return 0.0
''')


def _recipe(demo_recipe, tmp_path, fitness_module: str, **evomerge):
    (tmp_path / "fitness_under_test.py").write_text(fitness_module)
    return demo_recipe(eval={"limit": 20}, searcher={"name": "cma", "popsize": 4},
                       fitness="fitness_under_test:score", confirm=None, **evomerge)


def _start_cli(recipe: Path, run_dir: Path, evaluations: int, block_at: int) -> subprocess.Popen:
    """`evomerge search` in its own process, stopped inside candidate number `block_at` (1-based)."""
    marker = run_dir.parent / f"{run_dir.name}.blocked"
    process = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(recipe), "--out", str(run_dir),
                                "--evaluations", str(evaluations), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "EVOMERGE_TEST_BLOCK_AT": str(block_at),
                                    "EVOMERGE_TEST_MARKER": str(marker)})
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the search never reached the candidate"
        time.sleep(0.05)
    return process


def _history(run_dir: Path):
    return [(e.id, e.genotype, e.fitness, e.status) for e in RunStore.open(run_dir).evaluations.finished()]


@pytest.mark.slow
def test_kill_9_inside_a_generation_then_resume_ends_like_an_uninterrupted_run(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, BLOCKING_FITNESS)
    reference = start_search(recipe, tmp_path / "reference", SearchOptions(evaluations=12, quiet=True))
    reference_best = reference.run()

    process = _start_cli(recipe, tmp_path / "killed", 12, block_at=6)  # the 2nd of 4 in generation 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = RunStore.open(tmp_path / "killed").evaluations.finished()
    assert [e.id for e in stored] == [0, 1, 2, 3, 4]
    stored_at = {e.id: e.created for e in stored}

    resumed = resume_search(tmp_path / "killed", RunOptions(quiet=True))
    best = resumed.run()
    assert _history(tmp_path / "killed") == _history(tmp_path / "reference")
    assert (best.id, best.genotype, best.fitness) == (reference_best.id, reference_best.genotype, reference_best.fitness)
    after = {e.id: e.created for e in RunStore.open(tmp_path / "killed").evaluations.finished()}
    assert all(after[i] == created for i, created in stored_at.items()), "a stored evaluation was redone"


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_run_resumes(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, BLOCKING_FITNESS)
    run_dir = tmp_path / "run"
    process = _start_cli(recipe, run_dir, 8, block_at=3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"evomerge resume {run_dir}" in stderr
    store = RunStore.open(run_dir)
    assert store.meta("status") == "interrupted" and store.evaluations.count() == 2
    result = CliRunner().invoke(main, ["resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    store = RunStore.open(run_dir)
    assert store.evaluations.count() == 8 and store.meta("status") == "done"


def _evomerge(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *arguments], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_second_process_on_a_running_run_is_refused_naming_the_holder_and_resumes_after_a_kill_9(
        demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, BLOCKING_FITNESS)
    run_dir = tmp_path / "run"
    first = _start_cli(recipe, run_dir, 8, block_at=3)  # searching: inside its 3rd candidate, 2 stored
    for second in (_evomerge("resume", str(run_dir), "--quiet"),
                   _evomerge("search", str(recipe), "--out", str(run_dir), "--quiet"),
                   _evomerge("study", str(run_dir))):
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert [line] == [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: {run_dir.resolve()}: process {first.pid} on {socket.gethostname()} (`")
        assert "holds this run; wait for it to end or stop it" in line
    assert _evomerge("report", str(run_dir)).returncode == 0  # a reader works beside it
    store = RunStore.open(run_dir)
    assert store.evaluations.count() == 2 and len(store.events.all()) == 3  # nothing written by the others

    first.send_signal(signal.SIGKILL)  # the OS lets go of its lock
    first.wait()
    resumed = _evomerge("resume", str(run_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    store = RunStore.open(run_dir)
    assert store.evaluations.count() == 8 and store.meta("status") == "done"


def _searched(demo_recipe, tmp_path) -> Path:
    recipe = demo_recipe(eval={"limit": 5}, searcher={"name": "cma", "popsize": 4}, confirm=None)
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=6, quiet=True)).run()
    return tmp_path / "run"


def test_a_result_logged_twice_by_two_processes_is_heard_once_on_resume(demo_recipe, tmp_path):
    run_dir = _searched(demo_recipe, tmp_path)
    store = RunStore.open(run_dir)
    with store.db:  # what two processes on one run left before runs were locked: a result told twice
        store.events.append("tell", 1, {})
    best = resume_search(run_dir, RunOptions(quiet=True), evaluations=8).run()
    assert best.ok and RunStore.open(run_dir).evaluations.count() == 8


def test_a_log_that_cannot_be_replayed_is_refused_in_one_line_that_says_what_to_do(demo_recipe, tmp_path):
    run_dir = _searched(demo_recipe, tmp_path)
    store = RunStore.open(run_dir)
    with store.db:
        store.events.append("tell", 99, {})
    result = CliRunner().invoke(main, ["resume", str(run_dir), "--evaluations", "8", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output == (f"error: {run_dir}: the run's log has a tell of evaluation 99, which the searcher never "
                             "asked (did two processes write this run at once?); it cannot be resumed: `evomerge "
                             "report` and `evomerge export` still read it; start a new run to search further (its "
                             "best.yaml is a recipe to start from)\n")


def test_a_second_search_into_a_run_directory_is_refused(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 5})
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=1, quiet=True)).run()
    with pytest.raises(EvomergeError, match="a run already exists here; pass --resume"):
        start_search(recipe, tmp_path / "run", SearchOptions(evaluations=1, quiet=True))


def test_failing_candidates_are_stored_and_the_search_goes_on(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, FLAKY_FITNESS)
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=8, quiet=True))
    best = search.run()
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    failed = [e for e in evaluations if not e.ok]
    assert len(evaluations) == 8 and len(failed) == 4
    assert {e.error.split(":")[0] for e in failed} == {"RuntimeError", "ValueError"}
    assert all(e.fitness is None for e in failed)
    assert any("non-finite score for custom" in e.error for e in failed)
    assert best.ok


def _out_of_memory_on_call(number: int, function):
    """`function`, raising CUDA's out-of-memory error, as torch does, on its call `number` (1-based)."""
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == number:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return function(*args, **kwargs)

    return wrapped


def test_out_of_memory_in_the_merge_or_the_forward_pass_fails_that_candidate_and_the_search_goes_on(
        demo_recipe, tmp_path, monkeypatch):
    # Random proposals do not depend on the results: every run evaluates the same candidates.
    recipe = demo_recipe(eval={"limit": 10}, searcher={"name": "random", "batch": 4})

    def run(name: str):
        start_search(recipe, tmp_path / name, SearchOptions(evaluations=4, quiet=True)).run()
        return RunStore.open(tmp_path / name).evaluations.finished()

    reference = run("reference")
    assert all(e.ok for e in reference)
    with monkeypatch.context() as patch:  # the task-arithmetic kernel, on the 50th tensor: inside the 2nd merge
        failing = _out_of_memory_on_call(50, kernels.kernel_for("task_arithmetic"))
        patch.setattr(apply, "kernel_for", lambda method: failing)
        in_merge = run("merge")
    with monkeypatch.context() as patch:  # lm-eval's forward pass of the model, its 2nd batch
        patch.setattr(HFLM, "_model_call", _out_of_memory_on_call(2, HFLM._model_call))
        in_forward = run("forward")
    failed = [e for e in in_merge if e.failed]
    assert len(in_merge) == 4 and len(failed) == 1, [(e.id, e.status, e.error) for e in in_merge]
    assert failed[0].error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert failed[0].fitness is None
    # The others, before and after it, are scored as without the error: the resident model is whole.
    assert [(e.genotype, e.fitness) for e in in_merge if e.ok] == \
           [(e.genotype, e.fitness) for e in reference if e.id != failed[0].id]
    # In the forward pass the scorer halves its batch and scores again: nobody fails, nothing changes.
    assert [(e.status, e.genotype, e.fitness) for e in in_forward] == [(e.status, e.genotype, e.fitness) for e in reference]


def test_a_merge_that_fails_is_stored_with_mergekits_error(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 10}, searcher={"name": "random", "batch": 6}, search=[
        {"parameter": "weight", "range": [0.0, 1.5]},
        {"parameter": "density", "range": [0.05, 1.0]},
        {"parameter": "epsilon", "range": [0.01, 0.3]},
    ])
    text = recipe.read_text().replace("merge_method: task_arithmetic", "merge_method: della")
    recipe.write_text(text)
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=6, quiet=True)).run()
    errors = [e.error for e in RunStore.open(tmp_path / "run").evaluations.finished() if not e.ok]
    assert errors and all("Epsilon must be chosen" in e for e in errors)


def test_a_generation_where_every_candidate_fails_stops_with_the_first_error(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, "def score(model, tokenizer):\n    raise ValueError('boom')\n")
    search = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=16, quiet=True))
    with pytest.raises(EvomergeError, match="candidates failed in a row \(by default a generation, at least 5; .*\); "
                                            "the first of them, candidate 0: ValueError: boom") as error:
        search.run()
    # a generation (CMA-ES restarts with twice the population after a generation that all failed), at least 5
    failed = max(search.searcher.generation_size, 5)
    assert f": {failed} candidates failed in a row" in str(error.value)
    store = RunStore.open(tmp_path / "run")
    assert store.evaluations.count() == failed < 16 and store.meta("status") == "failed"


def _resaved(source: Path, target: Path, **config_changes) -> Path:
    model = AutoModelForCausalLM.from_pretrained(source)
    if config_changes:
        config = model.config
        for key, value in config_changes.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_parents_that_do_not_match_are_named_by_model_and_tensor(zoo, demo_recipe, tmp_path):
    odd = _resaved(zoo["dir"] / "rev", tmp_path / "odd", intermediate_size=96)
    recipe = demo_recipe()
    recipe.write_text(recipe.read_text().replace(str(zoo["dir"] / "rev"), str(odd)))
    with pytest.raises(EvomergeError) as error:
        start_search(recipe, tmp_path / "run", SearchOptions(quiet=True))
    message = str(error.value)
    assert error.value.key == "models[1].model"
    assert "tensor model.layers.0.mlp.down_proj.weight has shape [64, 96]" in message and str(odd) in message


def test_pickle_checkpoints_need_allow_pickle(zoo, demo_recipe, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((zoo["dir"] / "rev" / name).read_bytes())
    torch.save(AutoModelForCausalLM.from_pretrained(zoo["dir"] / "rev").state_dict(), pickled / "pytorch_model.bin")
    recipe = demo_recipe(eval={"limit": 5})
    recipe.write_text(recipe.read_text().replace(str(zoo["dir"] / "rev"), str(pickled)))
    with pytest.raises(EvomergeError, match="only pickle weights .* pass --allow-pickle"):
        start_search(recipe, tmp_path / "refused", SearchOptions(quiet=True))
    search = start_search(recipe, tmp_path / "allowed", SearchOptions(evaluations=1, quiet=True, allow_pickle=True))
    assert search.run().ok


def test_a_run_from_before_the_event_log_is_refused_in_one_line_without_loading_its_pickles(tmp_path):
    import sqlite3

    run_dir = tmp_path / "old"
    run_dir.mkdir()
    db = sqlite3.connect(run_dir / "run.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE checkpoints (generation INTEGER, evaluations INTEGER, searcher BLOB, created REAL)")
    db.execute("INSERT INTO checkpoints VALUES (1, 4, ?, 0)", (b"\x80\x04cos\nsystem\n.",))  # a pickle that runs code
    db.execute("""INSERT INTO meta VALUES ('recipe_text', '""')""")
    db.commit()
    result = CliRunner().invoke(main, ["resume", str(run_dir)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {run_dir / 'run.db'}: this run was made by an older evomerge (run format 1, "
                                     f"expected {FORMAT}); its searcher checkpoints are pickles, which evomerge no longer "
                                     "loads: start a new run")
