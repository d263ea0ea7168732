"""Candidates evaluated on Ray workers (a real local Ray, two CPU workers on the zoo): the same
winner as in process for a generational searcher, racing decided by the driver between stages,
a killed worker replaced and its candidate retried, a candidate that kills its worker twice
stored as failed, a driver killed with SIGKILL that resumes to exactly its budget and leaves no
Ray process behind; and on clusters made by `ray start` (tests/local_cluster.py): a search that
joins one with its token and leaves it running, and one that loses a node mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from local_cluster import local_cluster, stored

from evomerge.cli import main
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TROUBLE = textwrap.dedent('''
    import os
    import signal
    import time
    from pathlib import Path

    FOLDER = Path({folder!r})

    def score(model, tokenizer):
        """The test's trouble, by files in FOLDER: the first call after the first `block_after` calls
        (0 without that file) to find `arm` takes it, writes its process id to `blocked` and waits
        to be killed; a call that finds `die` takes one of its characters and kills its own process."""
        with open(FOLDER / "calls", "a") as calls:
            calls.write("x")
        after = int((FOLDER / "block_after").read_text()) if (FOLDER / "block_after").exists() else 0
        if (FOLDER / "calls").stat().st_size > after:
            try:
                os.rename(FOLDER / "arm", FOLDER / "armed")  # one worker wins
            except FileNotFoundError:
                pass
            else:
                (FOLDER / "blocked").write_text(str(os.getpid()))
                time.sleep(600)
        die = FOLDER / "die"
        if die.exists() and die.read_text().strip():
            die.write_text(die.read_text().strip()[1:])
            os.kill(os.getpid(), signal.SIGKILL)
        return 0.0
''')


def _recipe(demo_recipe, tmp_path, searcher, **evomerge):
    (tmp_path / "trouble.py").write_text(TROUBLE.format(folder=str(tmp_path)))
    return demo_recipe(eval={"limit": 20}, searcher=searcher, fitness="trouble:score", confirm=None, **evomerge)


def _wait_for(path: Path, seconds: float = 300) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_a_generational_search_on_two_workers_ends_exactly_as_in_process(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 20}, searcher={"name": "cma", "popsize": 4})
    start_search(recipe, tmp_path / "here", SearchOptions(evaluations=8, quiet=True)).run()
    best = start_search(recipe, tmp_path / "ray", SearchOptions(evaluations=8, quiet=True, workers=2)).run()
    here, there = (RunStore.open(tmp_path / name).evaluations.finished() for name in ("here", "ray"))
    assert [(e.id, e.genotype, e.fitness) for e in there] == [(e.id, e.genotype, e.fitness) for e in here]
    assert {e.worker for e in there} == {"ray-0", "ray-1"} and {e.worker for e in here} == {"local"}
    assert best.id == RunStore.open(tmp_path / "here").evaluations.ranked()[0].id


def test_racing_on_two_workers_stops_candidates_between_stages_on_the_drivers_bar(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 40, "racing": {"stages": [0.25, 1.0]}},
                         searcher={"name": "random"})  # asynchronous, and most of its candidates are poor
    best = start_search(recipe, tmp_path / "run", SearchOptions(evaluations=16, quiet=True, workers=2)).run()
    store = RunStore.open(tmp_path / "run")
    evaluations = store.evaluations.finished()
    raced = [e for e in evaluations if e.raced]
    staged = {event.evaluation for event in store.events.all() if event.kind == "stage"}
    assert raced and all(e.documents == 4 * 10 for e in raced)  # stopped after the first quarter
    assert all(e.documents == 4 * 40 and store.evaluations.document_scores(e.id) for e in evaluations if e.ok)
    assert staged == {e.id for e in evaluations}  # every candidate's first stage went to the driver
    assert {e.worker for e in evaluations} == {"ray-0", "ray-1"} and best.ok
    assert best.fitness == max(e.fitness for e in evaluations if e.ok)  # the winner: the best fully scored


def test_a_worker_killed_mid_candidate_is_replaced_and_the_candidate_retried_on_another(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, {"name": "random"})
    (tmp_path / "arm").touch()

    def kill_the_blocked_worker():
        os.kill(int(_wait_for(tmp_path / "blocked")), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_blocked_worker, daemon=True)
    killer.start()
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=6, quiet=True, workers=2)).run()
    killer.join(timeout=1)
    evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
    assert [e.id for e in evaluations] == list(range(6)) and all(e.ok for e in evaluations)
    retried = [e for e in evaluations if e.attempts == 2]
    assert len(retried) == 1 and all(e.attempts == 1 for e in evaluations if e not in retried)
    [lost] = retried[0].info["lost"]
    assert lost["worker"] != retried[0].worker and "ActorDiedError" in lost["reason"]


def test_a_candidate_that_kills_its_worker_twice_is_stored_as_failed_and_the_run_goes_on(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, {"name": "random"})
    (tmp_path / "die").write_text("xx")  # the first two calls kill their worker: both are candidate 0's
    start_search(recipe, tmp_path / "run", SearchOptions(evaluations=3, quiet=True, workers=1)).run()
    first, *rest = RunStore.open(tmp_path / "run").evaluations.finished()
    assert first.failed and first.attempts == 2 and first.error.startswith("WorkerLost: its worker died 2 times")
    assert [e.id for e in rest] == [1, 2] and all(e.ok for e in rest)


def _ray_processes() -> set:
    found = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    return {int(line.split()[0]) for line in found
            if any(word in line for word in ("ray::", "raylet", "gcs_server", "ray/dashboard", "ray/_private"))}


def test_the_driver_killed_with_sigkill_resumes_to_exactly_its_budget_and_leaves_no_ray_behind(demo_recipe, tmp_path):
    recipe = _recipe(demo_recipe, tmp_path, {"name": "random"})
    run_dir = tmp_path / "run"
    before = _ray_processes()
    (tmp_path / "block_after").write_text("5")  # two workers: when call 6 starts, at least 4 have finished
    (tmp_path / "arm").touch()
    driver = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(recipe), "--out", str(run_dir),
                               "--evaluations", "8", "--workers", "2", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "blocked")
    time.sleep(1)  # the results before the blocked candidate reach the store
    started = _ray_processes() - before
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    stored = {e.id: e.created for e in RunStore.open(run_dir).evaluations.finished()}
    assert 4 <= len(stored) < 8

    result = CliRunner().invoke(main, ["resume", str(run_dir), "--quiet"])  # on the run's own two workers
    assert result.exit_code == 0, result.output
    evaluations = RunStore.open(run_dir).evaluations.finished()
    assert [e.id for e in evaluations] == list(range(8)) and all(e.ok for e in evaluations)
    assert len({tuple(e.genotype) for e in evaluations}) == 8
    assert all(e.created == stored[e.id] for e in evaluations if e.id in stored), "a stored evaluation was redone"
    assert {e.worker for e in evaluations} == {"ray-0", "ray-1"}
    deadline = time.monotonic() + 120  # Ray's agents notice their raylet is gone within a minute
    while started & _ray_processes():
        assert time.monotonic() < deadline, f"Ray processes left behind: {started & _ray_processes()}"
        time.sleep(1)


def _search(recipe: Path, run_dir: Path, evaluations: int, address: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", str(recipe), "--out", str(run_dir),
                             "--evaluations", str(evaluations), "--workers", "2", "--ray-address", address, "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_search_joins_a_running_ray_cluster_with_its_token_and_leaves_it_running(demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 10}, searcher={"name": "random"}, confirm=None)
    with local_cluster([2], tmp_path) as cluster:  # token authentication on, RAY_AUTH_MODE unset: a user's shell
        wrong = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
        refused = _search(recipe, tmp_path / "refused", 4, cluster.address, wrong).communicate(timeout=120)[1]
        assert refused.strip() == (f"error: --ray-address: the Ray cluster at {cluster.address} refused this "
                                   "machine's Ray token: set RAY_AUTH_TOKEN to the one `ray get-auth-token` prints "
                                   "on its head node")
        search = _search(recipe, tmp_path / "run", 4, cluster.address, cluster.env)
        assert search.wait(timeout=600) == 0, search.communicate()[1][-2000:]
        evaluations = RunStore.open(tmp_path / "run").evaluations.finished()
        assert len(evaluations) == 4 and {e.worker for e in evaluations} == {"ray-0", "ray-1"}
        assert cluster.alive() == 1 and cluster.nodes[0].poll() is None  # evomerge left the cluster running
    assert not cluster.processes()


def test_a_node_lost_mid_run_has_its_candidate_retried_on_the_other_and_the_run_ends_with_its_budget(
        demo_recipe, tmp_path):
    recipe = demo_recipe(eval={"limit": 40}, searcher={"name": "random"}, confirm=None)
    run_dir = tmp_path / "run"
    with local_cluster([1, 1], tmp_path) as cluster:  # one worker on each node
        search = _search(recipe, run_dir, 16, cluster.address, cluster.env)
        deadline = time.monotonic() + 300
        while len(stored(run_dir)) < 2:  # both workers are busy from their first candidate to the budget's end
            assert search.poll() is None and time.monotonic() < deadline, search.communicate()[1][-2000:]
            time.sleep(0.2)
        cluster.kill_node(1)
        before = {i: e.created for i, e in stored(run_dir).items()}
        assert search.wait(timeout=600) == 0, search.communicate()[1][-2000:]
    assert not cluster.processes()
    evaluations = RunStore.open(run_dir).evaluations.finished()
    assert [e.id for e in evaluations] == list(range(16)) and all(e.ok for e in evaluations)
    assert all(e.created == before[e.id] for e in evaluations if e.id in before), "a stored evaluation was redone"
    [retried] = [e for e in evaluations if e.info.get("lost")]  # the lost node's candidate
    [lost] = retried.info["lost"]
    assert retried.attempts == 2 and lost["worker"] != retried.worker
    assert all(e.worker == retried.worker for e in evaluations if e.created > retried.created)  # its slot stays empty


def test_workers_without_ray_installed_is_a_one_line_error(demo_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(main, ["search", str(demo_recipe()), "--out", str(tmp_path / "run"), "--workers", "2"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --workers: workers run on Ray, which is not installed: "
                                     "pip install 'evomerge[ray]'")
    assert not (tmp_path / "run").exists()
