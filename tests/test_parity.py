"""The rule of the project: a candidate merged in memory has exactly mergekit-yaml's weights.

Every method in mergekit's registry (passthrough too) is merged at a random point of a
search space with per-layer gradients and filters in play, once by the materializer and
once by mergekit's `run_merge` (what `mergekit-yaml` runs), and compared tensor by tensor,
on each zoo family (untied llama; tied embeddings with grouped-query attention).
Randomized methods (DARE, DELLA) are compared under the same seed.

Both sides merge on EVOMERGE_TEST_DEVICE (default cpu; bench/gpu.sh sets cuda): the rule holds
per device, as the export's fingerprint check does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mergekit import merge_methods
from mergekit.common import ModelReference
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from safetensors.torch import load_file, save_file
from weights import assert_same_as_resident

from evomerge.merge.materializer import Materializer
from evomerge.merge.mergekit_tasks import draws_random
from evomerge.merge.write import write_with_mergekit
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run_options import RunOptions

RANGES = {
    "weight": (0.0, 1.0), "density": (0.3, 0.8), "gamma": (0.0, 0.05), "epsilon": (0.01, 0.1),
    "lambda": (0.5, 1.5), "t": (0.0, 1.0), "select_topk": (0.1, 1.0), "r": (0.05, 0.3),
    "alpha": (0.1, 0.5), "eps": (1e-9, 1e-7), "tol": (1e-6, 1e-4), "max_iter": (5, 20), "scale": (0.5, 1.5),
}
DEVICE = os.environ.get("EVOMERGE_TEST_DEVICE", "cpu")
MERGEKIT = MergeOptions(device=DEVICE, quiet=True)
METHODS = sorted(m.spec.name for m in merge_methods.registered_methods())


def _searched_recipe(method_name: str, base_model: str, specialists: list) -> dict:
    method = merge_methods.get(method_name)
    contract = method.spec.contract
    inputs = {"slerp": 1, "nearswap": 1, "arcee_fusion": 1, "nuslerp": 2, "passthrough": 1}.get(method_name, len(specialists))
    search = []
    for parameter in list(method.spec.input_parameters) + list(method.spec.shared_parameters):
        if parameter.name in RANGES:
            gene = {"parameter": parameter.name, "range": list(RANGES[parameter.name])}
            if parameter.name in ("weight", "t"):
                gene.update(layer_groups=2, filters=["self_attn"])
            elif parameter.name == "density":
                gene.update(layer_groups=3)
            search.append(gene)
    recipe = {
        "merge_method": method_name,
        "models": [{"model": path} for path in specialists[:inputs]],
        "dtype": "float32",
        "evomerge": {"seed": 7, "search": search},
    }
    if contract.base.value != "ignored":
        recipe["base_model"] = base_model
    return recipe


def _random_candidate(recipe_path: Path, seed: int = 1):
    space = build_space(load_recipe(recipe_path))
    return space.decode(np.random.default_rng(seed).uniform(space.lower, space.upper))


def _assert_same_weights(folder: Path, model: torch.nn.Module) -> None:
    assert_same_as_resident(load_file(folder / "model.safetensors"), model)


def _parents(zoo) -> tuple:
    return str(zoo["dir"] / "base"), [str(zoo["dir"] / m["path"]) for m in zoo["models"] if m["skill"]]


def test_every_numeric_parameter_of_every_method_is_searched_here():
    from evomerge.recipe.genes import _numeric_type

    unsearched = [(m.spec.name, p.name) for m in merge_methods.registered_methods()
                  for p in list(m.spec.input_parameters) + list(m.spec.shared_parameters)
                  if _numeric_type(p) is not None and p.name not in RANGES]
    assert not unsearched, f"parameters the parity tests would leave at their defaults: {unsearched}"


@pytest.mark.parametrize("method_name", METHODS)
def test_in_memory_merge_equals_mergekit(method_name, any_zoo, write_recipe, tmp_path):
    candidate = _random_candidate(write_recipe(_searched_recipe(method_name, *_parents(any_zoo))))
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


@pytest.mark.parametrize("method_name", METHODS)
def test_incremental_recompute_gives_the_weights_of_a_full_recompute(method_name, zoo, write_recipe):
    """Also catches a method that draws random numbers but is missing from `draws_random`:
    recomputing part of the tensors would then consume the seeded stream differently."""
    recipe = _searched_recipe(method_name, *_parents(zoo))
    recipe["evomerge"]["noise"] = {"range": [0.0, 0.02], "layer_groups": 2}  # a gene for methods without any
    space = build_space(load_recipe(write_recipe(recipe)))
    rng = np.random.default_rng(3)
    x = rng.uniform(space.lower, space.upper)
    materializer = Materializer(space.decode(x).merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(space.decode(x))
    changed = next(i for i, g in enumerate(space.genes) if g.group == 0 and g.filter in ("self_attn", None))
    x[changed] = space.lower[changed] + space.upper[changed] - x[changed]  # the other side of its range
    materializer.materialize(space.decode(x))
    fresh = Materializer(space.decode(x).merge, options=RunOptions(device=DEVICE, quiet=True))
    fresh.materialize(space.decode(x))
    incremental = materializer.model.state_dict()
    different = [name for name, tensor in fresh.model.state_dict().items() if not torch.equal(tensor, incremental[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_randomized_methods_depend_on_the_seed(base_model, specialists, write_recipe):
    assert draws_random("dare_ties") and draws_random("della") and not draws_random("ties")
    candidate = _random_candidate(write_recipe(_searched_recipe("dare_ties", base_model, specialists)))
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    first = {k: v.clone() for k, v in materializer.model.state_dict().items()}
    materializer.materialize(type(candidate)(merge=candidate.merge, seed=candidate.seed + 1))
    assert any(not torch.equal(first[k], v) for k, v in materializer.model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["dare_ties", "ties"])
def test_the_mergekit_yaml_command_gives_the_same_weights(method_name, base_model, specialists, write_recipe, tmp_path):
    candidate = _random_candidate(write_recipe(_searched_recipe(method_name, base_model, specialists)))
    decoded = tmp_path / "decoded.yaml"
    decoded.write_text(candidate.to_yaml())
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(mergekit_yaml), str(decoded), str(tmp_path / "cli"), "--random-seed", str(candidate.seed)]
                   + (["--cuda"] if DEVICE.startswith("cuda") else []),
                   check=True, capture_output=True)
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    _assert_same_weights(tmp_path / "cli", materializer.model)


def test_slices_recipes_and_tokenizer_source_match_too(base_model, specialists, write_recipe, tmp_path):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": base_model,
        "tokenizer_source": "base",
        "slices": [
            {"sources": [{"model": base_model, "layer_range": [0, 2]}]
             + [{"model": path, "layer_range": [0, 2]} for path in specialists]},
            {"sources": [{"model": base_model, "layer_range": [2, 4]}]
             + [{"model": path, "layer_range": [2, 4]} for path in specialists]},
        ],
        "dtype": "float32",
        "evomerge": {"search": [{"parameter": "weight", "range": [0, 1], "layer_groups": 2}]},
    }
    candidate = _random_candidate(write_recipe(recipe))
    assert candidate.merge.slices[1].sources[1].parameters["weight"] != candidate.merge.slices[0].sources[1].parameters["weight"]
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


@pytest.mark.parametrize("method_name", ["dare_ties", "della"])
def test_randomized_methods_with_a_merged_tokenizer_draw_in_mergekit_yaml_order(method_name, any_zoo, write_recipe,
                                                                                 tmp_path):
    """The embeddings wait for the merged tokenizer in mergekit's run, so they are merged later than
    among the merge tasks alone; every tensor after them draws from a later part of the seeded stream."""
    recipe = _searched_recipe(method_name, *_parents(any_zoo))
    recipe["tokenizer_source"] = "base"
    candidate = _random_candidate(write_recipe(recipe))
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


def test_a_candidate_that_reads_other_tensors_than_the_start_is_refused(base_model, specialists, write_recipe):
    recipe = _searched_recipe("task_arithmetic", base_model, specialists[:2])
    start = build_space(load_recipe(write_recipe(recipe))).starting_point()
    materializer = Materializer(start.merge, options=RunOptions(device=DEVICE, quiet=True))
    other = start.merge.model_copy(deep=True)
    other.models[1] = other.models[1].model_copy(update={"model": ModelReference.parse(specialists[2])})
    with pytest.raises(ValueError, match="other tensors or models than the starting recipe"):
        materializer.materialize(Candidate(merge=other, seed=start.seed))


def test_only_tensors_whose_parameters_changed_are_recomputed(base_model, specialists, write_recipe):
    path = write_recipe(_searched_recipe("ties", base_model, specialists))
    space = build_space(load_recipe(path))
    x = np.random.default_rng(0).uniform(space.lower, space.upper)
    materializer = Materializer(space.decode(x).merge, options=RunOptions(device=DEVICE, quiet=True))
    every_tensor = len(materializer.model.state_dict())
    first = materializer.materialize(space.decode(x))
    assert first.recomputed == first.total == every_tensor
    assert materializer.materialize(space.decode(x)).recomputed == 0
    attention_gene = next(i for i, g in enumerate(space.genes) if g.filter == "self_attn" and g.group == 0)
    x[attention_gene] = 1.0 - x[attention_gene]
    stats = materializer.materialize(space.decode(x))
    attention_tensors = [n for n in materializer.model.state_dict() if "self_attn" in n]
    assert 0 < stats.recomputed <= len(attention_tensors) < every_tensor


def test_explicit_layer_ranges_match_too(base_model, specialists, write_recipe, tmp_path):
    """`layer_groups: [[0, 1], [1, 4]]` (as `evomerge tree --suggest-groups` prints) is a per-layer gradient."""
    recipe = _searched_recipe("task_arithmetic", base_model, specialists)
    recipe["evomerge"]["search"] = [{"parameter": "weight", "range": [0, 1], "layer_groups": [[0, 1], [1, 4]],
                                     "filters": ["self_attn"]}]
    candidate = _random_candidate(write_recipe(recipe))
    fallback = candidate.merge.models[0].parameters["weight"][-1].value
    assert len(fallback) == 4 and fallback[0] != fallback[1] and fallback[1] == fallback[2] == fallback[3]
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


def _copy_in_dtype(model_dir: str, out: Path, dtype: torch.dtype) -> str:
    """A copy of a zoo model with its weights stored in `dtype` (as most real checkpoints store bfloat16)."""
    shutil.copytree(model_dir, out)
    save_file({name: tensor.to(dtype) for name, tensor in load_file(out / "model.safetensors").items()},
              out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


@pytest.mark.parametrize("method_name", ["ties", "slerp"])
@pytest.mark.parametrize("stored, merged", [(torch.bfloat16, "float32"), (torch.float32, "bfloat16")])
def test_parents_stay_in_their_checkpoint_dtype_or_narrower_and_still_match(method_name, stored, merged, any_zoo,
                                                                            write_recipe, tmp_path):
    """bfloat16 parents of a float32 recipe stay bfloat16 (upcast per tensor inside the merge);
    float32 parents of a bfloat16 recipe are cast at load, as mergekit's loader does."""
    base, specialists = _parents(any_zoo)
    copies = [_copy_in_dtype(path, tmp_path / Path(path).name, stored) for path in [base] + specialists[:2]]
    recipe = _searched_recipe(method_name, copies[0], copies[1:])
    recipe["dtype"] = merged
    candidate = _random_candidate(write_recipe(recipe))
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    resident = {tensor.dtype for name, _ in materializer.model.named_parameters()
                for tensor in materializer._parents.inputs(name).values()}
    assert resident == {torch.bfloat16}
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


def test_inputs_aligned_to_a_merged_tokenizer_are_cast_at_load_and_still_match(base_model, specialists, write_recipe,
                                                                                tmp_path):
    """mergekit averages new tokens' embeddings in the loaded dtype, so those inputs are loaded as it loads them."""
    copies = [_copy_in_dtype(path, tmp_path / Path(path).name, torch.bfloat16)
              for path in [base_model] + specialists[:2]]
    recipe = _searched_recipe("ties", copies[0], copies[1:])
    recipe["tokenizer_source"] = "union"
    candidate = _random_candidate(write_recipe(recipe))
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    resident = {name: {t.dtype for t in materializer._parents.inputs(name).values()}
                for name, _ in materializer.model.named_parameters()}
    assert resident["model.embed_tokens.weight"] == {torch.float32}
    assert resident["model.layers.0.mlp.up_proj.weight"] == {torch.bfloat16}
    materializer.materialize(candidate)
    write_with_mergekit(candidate, tmp_path / "mergekit", MERGEKIT)
    _assert_same_weights(tmp_path / "mergekit", materializer.model)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_merge_that_gives_no_tensor_fails_instead_of_leaving_the_previous_one(threads, base_model, specialists,
                                                                               write_recipe, monkeypatch):
    """ties runs mergekit's own task (task arithmetic and linear take evomerge's pieced path,
    test_fast_merge.py), on the CPU on as many threads as torch has: a tensor whose merge gives
    nothing fails the candidate, and the next candidate rewrites it (no thread of the failed one
    still writing)."""
    space = build_space(load_recipe(write_recipe(_searched_recipe("ties", base_model, specialists))))
    first, second = (space.decode(np.full(space.dimension, value)) for value in (0.2, 0.8))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        materializer = Materializer(first.merge, options=RunOptions(device=DEVICE, quiet=True))
        materializer.materialize(first)
        name = "model.layers.1.mlp.down_proj.weight"
        execute = ExecuteMergeMethodTask.execute
        monkeypatch.setattr(ExecuteMergeMethodTask, "execute",
                            lambda task, **inputs: None if task.output_weight.name == name else execute(task, **inputs))
        with pytest.raises(ValueError, match=f"ties merge gave no tensor for {name}"):
            materializer.materialize(second)
        monkeypatch.undo()
        materializer.materialize(second)
    finally:
        torch.set_num_threads(before)
    fresh = Materializer(second.merge, options=RunOptions(device=DEVICE, quiet=True))
    fresh.materialize(second)
    assert all(torch.equal(t, fresh.model.state_dict()[n]) for n, t in materializer.model.state_dict().items())


def test_non_finite_weights_fail_naming_the_first_bad_tensor(base_model, specialists, write_recipe, monkeypatch):
    """Checked once per candidate, after every tensor is written; the tensors are recomputed next time."""
    space = build_space(load_recipe(write_recipe(_searched_recipe("ties", base_model, specialists))))
    candidate = space.starting_point()
    materializer = Materializer(candidate.merge, options=RunOptions(device=DEVICE, quiet=True))
    bad = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    execute = ExecuteMergeMethodTask.execute

    def poisoned(task, **inputs):
        value = execute(task, **inputs)
        return value * float("nan") if task.output_weight.name in bad else value

    monkeypatch.setattr(ExecuteMergeMethodTask, "execute", poisoned)
    with pytest.raises(FloatingPointError, match=f"non-finite weights in {bad[0]}$"):
        materializer.materialize(candidate)
    monkeypatch.undo()
    assert materializer.materialize(candidate).recomputed == len(materializer.model.state_dict())
    assert all(torch.isfinite(tensor).all() for tensor in materializer.model.state_dict().values())


def test_parents_kept_on_the_host_are_pinned_only_for_a_cuda_device():
    from evomerge.merge.parent_cache import pins

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert pins(cuda, cpu) and not pins(cuda, cuda) and not pins(cpu, cpu)
