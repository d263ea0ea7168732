"""The fast merge path keeps mergekit's bits: planned once per run, task arithmetic computed in
cache-sized pieces into reused buffers, tensors merged on threads; every candidate still has
exactly the weights of mergekit's run_merge and of a fresh full recompute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mergekit.plan import MergePlanner
from safetensors.torch import load_file
from test_parity import DEVICE, MERGEKIT, _copy_in_dtype
from weights import assert_same_as_resident

from evomerge.merge import apply, kernels
from evomerge.merge.apply import merged as mergekit_merged
from evomerge.merge.materializer import Materializer
from evomerge.merge.write import write_with_mergekit
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run_options import RunOptions


def _recipe(method: str, base_model: str, specialists: list, **extra) -> dict:
    """The specialists' weights searched with a 2-point gradient, over the base (linear has none)."""
    return {"merge_method": method, **({} if method == "linear" else {"base_model": base_model}), "dtype": "float32",
            "models": [{"model": path, "parameters": {"weight": 0.5}} for path in specialists],
            "evomerge": {"seed": 3, "search": [{"parameter": "weight", "range": [0.0, 1.2], "layer_groups": 2}]},
            **extra}


@pytest.fixture
def whole_tensor_merges(monkeypatch):
    """The tensors written by mergekit's task rather than a pieced kernel, by name, as they are written."""
    names = []
    monkeypatch.setattr(apply, "merged", lambda item, device: names.append(item.name) or mergekit_merged(item, device))
    return names


@pytest.fixture
def torch_threads():
    """Two torch threads (the materializer merges tensors on as many), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method, parameters", [("task_arithmetic", {}),
                                                ("task_arithmetic", {"normalize": True, "lambda": 0.7}),
                                                ("linear", {}), ("linear", {"normalize": False})])
def test_pieced_kernels_equal_mergekit(method, parameters, any_zoo, write_recipe, whole_tensor_merges, tmp_path,
                                      monkeypatch):
    """Pieces of 96 values split every matrix of the zoo, with a short last piece; every tensor is pieced."""
    monkeypatch.setattr(kernels, "PIECE", 96)
    base = str(any_zoo["dir"] / "base")
    models = [str(any_zoo["dir"] / m["path"]) for m in any_zoo["models"] if m["skill"]]
    recipe = _recipe(method, base, models, **({"parameters": parameters} if parameters else {}))
    space = build_space(load_recipe(write_recipe(recipe)))
    candidate = space.decode(np.random.default_rng(0).uniform(space.lower, space.upper))
    materializer = Materializer(candidate.merge, options=RunOptions(device="cpu", quiet=True))
    stats = materializer.materialize(candidate)
    assert stats.recomputed == stats.total and whole_tensor_merges == []  # each tensor written, none by mergekit's task
    write_with_mergekit(candidate, tmp_path / "mergekit")
    assert_same_as_resident(load_file(tmp_path / "mergekit" / "model.safetensors"), materializer.model)


@pytest.mark.parametrize("method, stored, merged", [(m, torch.bfloat16, "float32") for m in ("task_arithmetic", "linear")]
                         + [(m, torch.float32, "bfloat16") for m in ("task_arithmetic", "linear")])
def test_pieced_kernels_with_parents_in_another_dtype_equal_mergekit(method, stored, merged, base_model, specialists,
                                                                     write_recipe, whole_tensor_merges, tmp_path,
                                                                     monkeypatch):
    """bfloat16 parents of a float32 merge are widened piece by piece; a bfloat16 merge's float32
    parents are cast at load, and linear's float32 sum is cast back to bfloat16."""
    monkeypatch.setattr(kernels, "PIECE", 96)
    copies = [_copy_in_dtype(path, tmp_path / Path(path).name, stored) for path in [base_model] + specialists[:2]]
    recipe = _recipe(method, copies[0], copies[1:])
    recipe["dtype"] = merged
    space = build_space(load_recipe(write_recipe(recipe)))
    candidate = space.decode(np.random.default_rng(2).uniform(space.lower, space.upper))
    materializer = Materializer(candidate.merge, options=RunOptions(device="cpu", quiet=True))
    stats = materializer.materialize(candidate)
    assert stats.recomputed == stats.total and whole_tensor_merges == []  # each tensor written, none by mergekit's task
    write_with_mergekit(candidate, tmp_path / "mergekit")
    assert_same_as_resident(load_file(tmp_path / "mergekit" / "model.safetensors"), materializer.model)


@pytest.mark.parametrize("noise", [False, True], ids=["plain", "noise"])
@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_a_float32_merge_scored_in_bfloat16_is_the_float32_candidate_cast_once(method, noise, any_zoo, write_recipe,
                                                                               whole_tensor_merges, tmp_path,
                                                                               monkeypatch):
    """CUDA's default: the resident model is bfloat16, the merge float32. The pieced kernels cast
    mergekit's result once as they write it; with noise, which is added before the cast, mergekit's
    task runs. Either way every weight is the float32 candidate's, cast once. On EVOMERGE_TEST_DEVICE,
    as test_parity (bench/gpu.sh runs it on CUDA, where this is the default)."""
    monkeypatch.setattr(kernels, "PIECE", 96)
    recipe = _recipe(method, str(any_zoo["dir"] / "base"),
                     [str(any_zoo["dir"] / m["path"]) for m in any_zoo["models"] if m["skill"]])
    if noise:
        recipe["evomerge"]["noise"] = {"range": [0.01, 0.02]}
    space = build_space(load_recipe(write_recipe(recipe)))
    candidate = space.decode(np.random.default_rng(4).uniform(space.lower, space.upper))
    scored = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True), dtype="bfloat16")
    written = scored.materialize(candidate).recomputed
    assert len(whole_tensor_merges) == (written if noise else 0)

    merged = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))  # in the recipe's float32
    merged.materialize(candidate)
    as_merged = merged.model.state_dict()
    assert all(tensor.dtype == torch.bfloat16 and torch.equal(tensor, as_merged[name].to(torch.bfloat16))
               for name, tensor in scored.model.state_dict().items())
    if not noise:
        write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
        cast = {n: t.to(torch.bfloat16) for n, t in load_file(tmp_path / "mergekit" / "model.safetensors").items()}
        assert_same_as_resident(cast, scored.model)


@pytest.mark.parametrize("method", ["task_arithmetic", "linear", "ties", "dare_linear"])
def test_a_run_of_incremental_candidates_on_threads_equals_full_recomputes(method, base_model, specialists,
                                                                           write_recipe, torch_threads,
                                                                           monkeypatch):
    """Scratch buffers and the thread pool are reused from candidate to candidate; a randomized
    method (dare_linear) still draws in mergekit's order."""
    monkeypatch.setattr(kernels, "PIECE", 1024)
    recipe = _recipe(method, base_model, specialists)
    recipe["evomerge"]["noise"] = {"range": [0.0, 0.02]}
    space = build_space(load_recipe(write_recipe(recipe)))
    rng = np.random.default_rng(1)
    x = rng.uniform(space.lower, space.upper)
    resident = Materializer(space.decode(x).merge, options=RunOptions(device="cpu", quiet=True))
    for step in range(4):
        gene = step % space.dimension
        x[gene] = rng.uniform(space.lower[gene], space.upper[gene])
        resident.materialize(space.decode(x))
        torch.set_num_threads(1)
        fresh = Materializer(space.decode(x).merge, options=RunOptions(device="cpu", quiet=True))
        fresh.materialize(space.decode(x))
        torch.set_num_threads(2)
        now = resident.model.state_dict()
        different = [n for n, t in fresh.model.state_dict().items() if not torch.equal(t, now[n])]
        assert not different, f"step {step}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_candidates_are_not_planned_again(base_model, specialists, write_recipe, monkeypatch):
    space = build_space(load_recipe(write_recipe(_recipe("task_arithmetic", base_model, specialists))))
    materializer = Materializer(space.starting_point().merge, options=RunOptions(device="cpu", quiet=True))

    def refuse(*args, **kwargs):
        raise AssertionError("a candidate of the run's structure was planned again")

    monkeypatch.setattr(MergePlanner, "plan_to_disk", refuse)
    for value in (0.1, 0.9):
        assert materializer.materialize(space.decode(np.full(space.dimension, value))).recomputed > 0


def test_a_candidate_of_another_shape_is_planned_anew_and_matches(base_model, specialists, write_recipe):
    """Another output dtype is a new structure: planned again, every tensor rewritten, as a fresh merge."""
    space = build_space(load_recipe(write_recipe(_recipe("task_arithmetic", base_model, specialists))))
    start = space.starting_point()
    materializer = Materializer(start.merge, options=RunOptions(device="cpu", quiet=True))
    materializer.materialize(start)
    other = type(start)(merge=start.merge.model_copy(update={"out_dtype": "bfloat16"}), seed=start.seed)
    stats = materializer.materialize(other)
    assert stats.recomputed == stats.total
    fresh = Materializer(other.merge, options=RunOptions(device="cpu", quiet=True), dtype="float32")  # the first's resident dtype
    fresh.materialize(other)
    assert all(torch.equal(t, fresh.model.state_dict()[n]) for n, t in materializer.model.state_dict().items())


def test_non_finite_weights_from_the_pieced_path_fail_naming_the_tensor(base_model, specialists, write_recipe):
    space = build_space(load_recipe(write_recipe(_recipe("task_arithmetic", base_model, specialists))))
    candidate = space.starting_point()
    materializer = Materializer(candidate.merge, options=RunOptions(device="cpu", quiet=True))
    name = "model.layers.2.mlp.up_proj.weight"
    inputs = materializer._parents.inputs(name)
    parent = next(model for model in inputs if model != candidate.merge.base_model)
    kept = inputs[parent].clone()
    inputs[parent].view(-1)[7] = float("inf")
    with pytest.raises(FloatingPointError, match=f"non-finite weights in {name}$"):
        materializer.materialize(candidate)
    inputs[parent].copy_(kept)
    assert materializer.materialize(candidate).recomputed == len(materializer.model.state_dict())
