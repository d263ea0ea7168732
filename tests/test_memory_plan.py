"""`evomerge plan`: memory, genes and documents from configs and safetensors headers alone, checked
against a zoo merge's measured tensors and against arithmetic at 7B; a recipe that cannot fit is
refused in one line naming the cheapest fix, by the command and before a search."""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from click.testing import CliRunner
from shaped import LLAMA_7B, write_shaped_llama

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.paths import TASKS_DIR
from evomerge.recipe.loading import load_recipe
from evomerge.run import memory_plan
from evomerge.run.memory_plan import gib, make_plan, parse_bytes
from evomerge.run.start import SearchOptions, start_search
from evomerge.run.worker import Worker
from evomerge.run_options import RunOptions

GIB = 1024 ** 3


def _bytes(tensors) -> int:
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
    return sum(unique.values())


def test_the_estimate_is_within_a_quarter_of_a_zoo_merge_and_scores_measured_tensors(demo_recipe):
    recipe = load_recipe(demo_recipe(eval={"limit": 5}))
    estimate = make_plan(recipe, device="cpu").weights
    worker = Worker(recipe, RunOptions(device="cpu"))
    assert worker.begin(worker.space.x0.tolist()).outcome.status == "ok"  # merged and scored
    materializer = worker.materializer
    parents = _bytes(t for inputs in materializer._parents._inputs.values() for t in inputs.values())
    output = _bytes(materializer.model.parameters())
    measured = parents + output
    assert estimate.resident_parents + estimate.output == pytest.approx(measured, rel=0.25)
    assert estimate.output == output


@pytest.fixture(scope="module")
def shaped_7b(tmp_path_factory):
    """Three Llama-7B-shaped parents in bfloat16 (headers only) and a task-arithmetic recipe of them."""
    root = tmp_path_factory.mktemp("seven_b")
    parameters = [write_shaped_llama(root / name, LLAMA_7B) for name in ("base", "math", "code")]
    recipe = {"merge_method": "task_arithmetic", "base_model": str(root / "base"), "dtype": "float32",
              "models": [{"model": str(root / n), "parameters": {"weight": 0.5}} for n in ("math", "code")],
              "evomerge": {"search": [{"parameter": "weight", "range": [0.0, 1.0], "layer_groups": 4}],
                           "tasks": [{"name": "zoo_rev_search"}], "task_paths": [str(TASKS_DIR)],
                           "budget": {"evaluations": 64}}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path, parameters[0]


def _with(path, tmp_path, **evomerge):
    recipe = yaml.safe_load(path.read_text())
    recipe["evomerge"].update(evomerge)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return changed


def test_scoring_is_sized_for_the_longest_sequence_lm_eval_feeds_the_model(demo_recipe):
    recipe = load_recipe(demo_recipe(eval={"limit": 5}, report_tasks=[], confirm=None))
    plan = make_plan(recipe, device="cpu")
    worker = Worker(recipe, RunOptions(device="cpu"))
    fed = []
    worker.materializer.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append((args[0] if args else kwargs["input_ids"]).shape[1]), with_kwargs=True)
    assert worker.begin(worker.space.x0.tolist()).outcome.status == "ok"

    assert fed and plan.sequence - 2 <= max(fed) <= plan.sequence < plan.max_length
    assert plan.per_sequence == plan.sequence * (plan.per_sequence // plan.sequence)
    assert f"x {plan.sequence} tokens, the longest request of the tasks" in "\n".join(plan.lines())


def _header_bytes(folder) -> dict:
    """Each tensor's bytes as its safetensors header places them (data_offsets), read here without evomerge."""
    found = {}
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        found.update({name: entry["data_offsets"][1] - entry["data_offsets"][0]
                      for name, entry in header.items() if name != "__metadata__"})
    return found


def test_a_7b_shaped_recipe_is_planned_from_its_headers(shaped_7b):
    path, parameters = shaped_7b
    assert parameters == 6_738_415_616  # Llama-2-7B's count
    recipe = load_recipe(path)
    on_gpu = make_plan(recipe, device="cuda", memory=parse_bytes("80GiB"))
    weights = on_gpu.weights
    measured = {str(path.parent / name): _header_bytes(path.parent / name) for name in ("base", "math", "code")}
    assert weights.parents == {model: sum(sizes.values()) for model, sizes in measured.items()}
    assert weights.resident_parents == sum(weights.parents.values())  # kept in bfloat16 under a float32 merge
    sizes = measured[str(path.parent / "base")]
    largest = max(sizes.values())
    assert sizes[weights.largest[0]] == largest == 2 * weights.largest[1]  # elements, from bfloat16 bytes
    assert (on_gpu.scoring_dtype, weights.output) == ("bfloat16", sum(sizes.values()))  # float32 merge, scored in bf16
    assert weights.workspace >= len(weights.parents) * largest * 2  # each input widened to float32
    assert on_gpu.batch_size == "auto" and on_gpu.max_length == 4096
    assert on_gpu.activations(batch=4) == 4 * on_gpu.activations(batch=1) > 0
    # parents: host keeps exactly the resident parents off the device, in host memory
    assert on_gpu.device_bytes("device") - on_gpu.device_bytes("host") == weights.resident_parents
    assert on_gpu.host_bytes("host") == weights.resident_parents and on_gpu.refusal() is None
    on_cpu = make_plan(recipe, device="cpu", memory=parse_bytes("1TiB"))
    assert (on_cpu.scoring_dtype, on_cpu.weights.output, on_cpu.batch_size) == ("float32", 2 * weights.output, 64)
    assert on_cpu.device_bytes("host") == on_cpu.device_bytes("device")  # one memory on a CPU machine


def test_the_plan_command_prints_the_figures_and_refuses_too_little_memory_naming_the_fix(shaped_7b, tmp_path):
    path, _ = shaped_7b
    fits = CliRunner().invoke(main, ["plan", str(path), "--device", "cuda", "--device-memory", "80GiB"])
    assert fits.exit_code == 0, fits.output
    planned = make_plan(load_recipe(path), device="cuda", memory=parse_bytes("80GiB"))
    on_device, on_host = gib(planned.device_bytes("device")), gib(planned.device_bytes("host"))
    for line in ("merged architecture: llama, 32 layers, hidden size 4096, vocabulary 32000",
                 f"/base: {gib(planned.weights.parents[str(path.parent / 'base')])}",
                 f"output model (bfloat16, scored on cuda): {gib(planned.weights.output)}",
                 f"parents: device (the recipe's): {on_device} on the device, fits in the 80.00 GiB of --device-memory",
                 f"parents: host: {on_host} on the device, fits in the 80.00 GiB of --device-memory; "
                 f"{gib(planned.host_bytes('host'))} in host",
                 "genes: 8", "documents: 112 per evaluation, 7168 per run",  # 38 of the 150 held back to confirm
                 "Resolution at two standard errors (binomial bound): the 112 search documents tell apart "
                 "differences of 0.1336; the 38 held-back documents (25% of the search tasks') that confirm the "
                 "finalists, 0.2294"):
        assert line in fits.output
    assert planned.device_bytes("host") <= parse_bytes("24GiB") < planned.device_bytes("device")
    small = CliRunner().invoke(main, ["plan", str(path), "--device", "cuda", "--device-memory", "24GiB"])
    assert small.exit_code == 2
    assert small.output.splitlines()[-1] == (
        f"error: {path}: evomerge.parents: needs {on_device} on cuda with parents: device, more than the 24.00 GiB "
        f"of --device-memory; set `parents: host` ({on_host} on the device)")
    batch = CliRunner().invoke(main, ["plan", str(path), "--device", "cpu", "--device-memory", "100GiB"])
    assert batch.exit_code == 0, batch.output  # batch 64 does not fit, a halved one does: a retry, not a refusal
    assert "set a smaller batch, `eval: {batch_size: 16}`, to start there" in batch.output
    host = _with(path, tmp_path, parents="host")
    workers = CliRunner().invoke(main, ["plan", str(host), "--device", "cuda", "--device-memory", "80GiB",
                                        "--workers", "6"])
    assert workers.exit_code == 2 and "run fewer workers per device (5 fit" in workers.output.splitlines()[-1]
    bad = CliRunner().invoke(main, ["plan", str(path), "--device-memory", "lots"])
    assert bad.exit_code == 2 and "--device-memory: expected a size like 80GiB" in bad.output


def test_a_search_that_cannot_fit_is_refused_before_anything_loads(demo_recipe, tmp_path, monkeypatch):
    at_16 = make_plan(load_recipe(demo_recipe())).device_bytes("device", batch=16)
    monkeypatch.setattr(memory_plan, "local_memory", lambda device_type, index=None: at_16)
    plan = make_plan(load_recipe(demo_recipe()))
    assert plan.refusal() is None  # batch 64 does not fit, but scoring halves its batch to what fits
    assert plan.batch_advice().endswith("set a smaller batch, `eval: {batch_size: 16}`, to start there")
    monkeypatch.setattr(memory_plan, "local_memory", lambda device_type, index=None: 2 ** 20)
    with pytest.raises(EvomergeError, match=r"evomerge.parents: needs [0-9.]+ MiB on cpu with parents: device at batch "
                                            r"size 1, more than the 1.00 MiB of this machine's cpu; even batch size 1 "
                                            r"and one worker need [0-9.]+ MiB$"):
        start_search(demo_recipe(), tmp_path / "run", SearchOptions(quiet=True))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, size", [("80GiB", 80 * GIB), ("24 GB", 24e9), ("1e9", 1e9), ("512MiB", 2 ** 29)])
def test_memory_sizes_parse(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("size", ["1.2.3GiB", "1..5GB", ".GiB", "80 GiBs"])
def test_a_malformed_device_memory_is_refused_in_one_line_naming_the_option(shaped_7b, size):
    path, _ = shaped_7b
    result = CliRunner().invoke(main, ["plan", str(path), "--device", "cuda", "--device-memory", size])
    assert result.exit_code == 2, result.output  # not a traceback (exit code 1)
    assert result.output.splitlines()[-1] == f"error: --device-memory: expected a size like 80GiB or 24GB, got {size!r}"
