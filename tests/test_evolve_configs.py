"""mergekit-evolve configs come in unchanged: the genome's own space, its CLI, and a search.

The parity test builds the reference with mergekit's own genome code (imported from the
installed mergekit, not through evomerge) and merges it with `run_merge`; evomerge reads the
same config file and merges its decoded genotypes in memory. Genotypes are drawn from ranges
wider than the defaults, so mergekit's abs() of weights and clamp of densities are in play.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mergekit.evo.genome import METHOD_PARAM_MAPS, ModelGenome, ModelGenomeDefinition
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from weights import assert_same_as_resident

from evomerge.cli import main
from evomerge.merge.materializer import Materializer
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.space_factory import build_space
from evomerge.run.store import RunStore
from evomerge.run_options import RunOptions

GENOMES = {  # each method with the genome options that change its recipe
    "linear": {"layer_granularity": 2, "filters": ["self_attn"], "normalize": False},
    "task_arithmetic": {"layer_granularity": 1, "smooth": True, "allow_negative_weights": True,
                        "filters": ["mlp"]},
    "ties": {"layer_granularity": 2, "filters": ["self_attn", "mlp"], "tokenizer_source": "base"},
    "dare_ties": {"layer_granularity": 2, "smooth": True, "tokenizer_source": "base"},
    "slerp": {"layer_granularity": 2, "tokenizer_source": "base"},
}
WIDE = {"weight": [-1.0, 2.0], "density": [-0.5, 1.5], "t": [-2.0, 2.0]}


def _genome(zoo, method: str, models=("pair", "rev", "sort")) -> dict:
    genome = {"models": [str(zoo["dir"] / m) for m in models[: 2 if method == "slerp" else 3]],
              "merge_method": method, **GENOMES[method]}
    if method in ("task_arithmetic", "ties", "dare_ties"):
        genome["base_model"] = str(zoo["dir"] / "base")
    return genome


def _config(genome: dict, **top) -> dict:
    return {"genome": genome, "tasks": [{"name": "zoo_pair_search", "metric": "acc,none"}],
            "limit": 8, "apply_chat_template": False, **top}


@pytest.mark.parametrize("method", sorted(GENOMES))
def test_every_genotype_merges_to_what_mergekit_evolve_merges(method, zoo, write_recipe, tmp_path):
    genome = _genome(zoo, method)
    ranges = {p: WIDE[p] for p in METHOD_PARAM_MAPS[method]}
    space = build_space(load_recipe(write_recipe(_config({**genome, "ranges": ranges}), "evolve.yml")))
    theirs = ModelGenome(ModelGenomeDefinition.model_validate(genome))
    assert space.dimension == theirs.initial_genotype().numel()
    assert np.allclose(space.x0, theirs.initial_genotype().reshape(-1).numpy())
    rng = np.random.default_rng(sorted(GENOMES).index(method))
    materializer = None
    for draw in range(2):
        genotype = rng.uniform(space.lower, space.upper)
        candidate = space.decode(genotype)
        materializer = materializer or Materializer(candidate.merge, options=RunOptions(quiet=True))
        materializer.materialize(candidate)
        out = tmp_path / f"mergekit-{draw}"
        options = MergeOptions(quiet=True, random_seed=candidate.seed)
        run_merge(theirs.genotype_merge_config(genotype), str(out), options)
        assert_same_as_resident(load_file(out / "model.safetensors"), materializer.model)


def test_convert_writes_a_recipe_that_mergekit_merges_and_that_refuses_edits_of_its_start(zoo, tmp_path):
    genome = _genome(zoo, "ties")
    genome["models"] = [os.path.relpath(m, tmp_path) for m in genome["models"]]  # as a user writes them
    (tmp_path / "evolve.yml").write_text(yaml.safe_dump(_config(genome, num_fewshot=0)))
    out = tmp_path / "edit" / "recipe.yaml"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "evolve.yml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text())
    assert written["merge_method"] == "ties" and written["dtype"] == "bfloat16"
    first = written["evomerge"]["genome"]["models"][0]  # relative to the recipe's folder now
    assert not os.path.isabs(first) and (out.parent / first).resolve() == (zoo["dir"] / "pair").resolve()
    assert written["slices"][0]["sources"][0]["model"] == first
    assert written["evomerge"]["tasks"] == [{"name": "zoo_pair_search", "metric": "acc", "weight": 1.0}]
    assert written["evomerge"]["budget"] == {"evaluations": 100}
    assert written["evomerge"]["eval"] == {"limit": 8, "num_fewshot": 0}
    recipe = load_recipe(out)
    assert build_space(recipe).starting_point().merge == recipe.merge
    run_merge(recipe.merge, str(tmp_path / "merged"), MergeOptions(quiet=True))  # what mergekit-yaml runs on it
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    written["parameters"]["normalize"] = False
    out.write_text(yaml.safe_dump(written))
    result = CliRunner().invoke(main, ["search", str(out), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "mergekit keys must be the genome's starting point" in result.output


@pytest.mark.parametrize("argv, expected", [
    (["--vllm"], "vLLM is not supported"),
    (["--wandb"], "evomerge.track.wandb"),
    (["--load-in-4bit"], "quantized scoring is not supported"),
    (["--timeout", "60"], "budget is evaluations"),
])
def test_mergekit_evolve_options_without_a_meaning_are_refused(argv, expected, zoo, write_recipe, tmp_path):
    config = write_recipe(_config(_genome(zoo, "linear")), "evolve.yml")
    result = CliRunner().invoke(main, ["search", str(config), "--out", str(tmp_path / "run")] + argv)
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, key", [
    (lambda c: c.update(shuffle=True), "shuffle"),
    (lambda c: c.update(limt=4), "limt"),
    (lambda c: c["genome"].update(layer_granularty=2), "genome.layer_granularty"),
    (lambda c: c["genome"].update(merge_method="slerp", filters=None), "genome.models"),
    (lambda c: c["genome"].update(layer_granularity=3), "genome"),
])
def test_a_bad_mergekit_evolve_config_is_one_line_naming_the_key(change, key, zoo, write_recipe, tmp_path):
    config = _config(_genome(zoo, "ties"))
    change(config)
    result = CliRunner().invoke(main, ["search", str(write_recipe(config, "evolve.yml")), "--out", str(tmp_path / "r")])
    [line] = result.output.strip().splitlines()
    assert result.exit_code == 2 and f"evolve.yml: {key}:" in line, line


def test_a_mergekit_evolve_config_is_searched_with_mergekit_evolve_options(zoo, tasks_dir, write_recipe, tmp_path):
    config = write_recipe(_config(_genome(zoo, "task_arithmetic")), "evolve.yml")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "search", str(config), "--out", str(run), "--quiet", "--max-fevals", "4", "--sigma0", "0.3", "--force-population-size", "3",
        "--task-search-path", str(tasks_dir), "--batch-size", "8", "--random-seed", "5", "--num-gpus", "0",
        "--storage-path", str(tmp_path / "storage"), "--strategy", "serial", "--no-vllm", "--no-reshard"])
    assert result.exit_code == 0, result.output
    assert {"--storage-path", "--strategy", "--reshard"} == {
        line.split(":")[0].split()[1] for line in result.output.splitlines() if line.startswith("ignoring ")}
    store = RunStore.open(run)
    options = store.meta("options")
    assert options["searcher_options"] == {"sigma0": 0.3, "popsize": 3}
    assert (options["batch_size"], options["seed"], options["workers"]) == (8, 5, 0)
    # CMA-ES asked its generations three at a time (its default population here is 4 + floor(3 ln d) > 3)
    assert [e.generation for e in store.evaluations.finished()] == [0, 0, 0, 1]
    best = yaml.safe_load((run / "best.yaml").read_text())
    assert best["merge_method"] == "task_arithmetic" and len(best["models"]) == 4  # smooth: a gradient recipe
