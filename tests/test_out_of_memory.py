"""Out of memory in scoring costs speed, not the run: the batch halves and the call is retried,
down to 1; only a candidate that fails at batch size 1 is stored as failed."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.materializer import Materializer
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.store import RunStore
from evomerge.scoring.scorer import _hflm


def _cuda_out_of_memory(sequences: int) -> None:
    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {sequences} sequences")


def _cpu_out_of_memory(sequences: int) -> None:
    """The CPU allocator's own error (a plain RuntimeError), from an allocation no machine can grant."""
    torch.empty(2 ** 50 * sequences, dtype=torch.uint8)


def _forwards_fail(monkeypatch, above: int, when=lambda: True, fail=_cuda_out_of_memory) -> list:
    """lm-eval's forward pass runs out of memory (by default torch's own CUDA error) for more than `above`
    sequences (while `when()`); returns the batch sizes it was given."""
    hflm = _hflm()
    original = hflm._model_call
    seen = []

    def model_call(self, inps, *args, **kwargs):
        seen.append(inps.shape[0])
        if inps.shape[0] > above and when():
            fail(inps.shape[0])
        return original(self, inps, *args, **kwargs)

    monkeypatch.setattr(hflm, "_model_call", model_call)
    return seen


def _search(recipe, run_dir):
    search = start_search(recipe, run_dir, SearchOptions(evaluations=4, quiet=True))
    search.run()
    return search, RunStore.open(run_dir).evaluations.finished()


@pytest.mark.parametrize("fail", [_cuda_out_of_memory, _cpu_out_of_memory], ids=["cuda", "cpu"])
def test_out_of_memory_halves_the_batch_keeps_it_and_scores_the_same(demo_recipe, tmp_path, monkeypatch, fail):
    recipe = demo_recipe(eval={"limit": 12, "batch_size": 16}, searcher={"name": "random", "batch": 4})
    _, plain = _search(recipe, tmp_path / "plain")

    seen = _forwards_fail(monkeypatch, above=3, fail=fail)
    search, shrunk = _search(recipe, tmp_path / "shrunk")
    assert search.worker.scorer.lm.batch_size == 2  # 16 -> 8 -> 4 -> 2, kept for later candidates
    assert max(seen[seen.index(2):]) == 2
    assert [e.status for e in shrunk] == ["ok"] * 4
    assert [e.fitness for e in shrunk] == [e.fitness for e in plain]
    for a, b in zip(shrunk, plain):  # another batch pads differently: float sums may differ in the last bits
        assert {task: pytest.approx(metrics, rel=1e-5) for task, metrics in a.metrics.items()} == b.metrics


def test_racing_stages_shrink_the_batch_too_and_race_the_same(demo_recipe, tmp_path, monkeypatch):
    recipe = demo_recipe(eval={"limit": 16, "batch_size": 8, "racing": True}, searcher={"name": "random", "batch": 4})
    _, plain = _search(recipe, tmp_path / "plain")
    _forwards_fail(monkeypatch, above=2)
    search, shrunk = _search(recipe, tmp_path / "shrunk")
    assert search.worker.scorer.lm.batch_size == 2
    assert [(e.status, e.fitness, e.documents) for e in shrunk] == [(e.status, e.fitness, e.documents) for e in plain]


def test_a_candidate_out_of_memory_at_batch_size_1_is_failed_and_the_search_goes_on(demo_recipe, tmp_path,
                                                                                       monkeypatch):
    recipe = demo_recipe(eval={"limit": 12, "batch_size": 4}, searcher={"name": "random", "batch": 4})
    merged = []
    original = Materializer.materialize

    def materialize(self, candidate):
        merged.append(candidate)
        return original(self, candidate)

    monkeypatch.setattr(Materializer, "materialize", materialize)
    _forwards_fail(monkeypatch, above=0, when=lambda: len(merged) == 2)  # the second candidate fails at every size
    search, evaluations = _search(recipe, tmp_path / "run")
    assert [e.status for e in evaluations] == ["ok", "failed", "ok", "ok"]
    assert evaluations[1].error.startswith("OutOfMemoryError: CUDA out of memory")
    assert search.worker.scorer.lm.batch_size == 1
