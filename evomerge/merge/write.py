"""Writes a candidate as a Hugging Face model folder, through mergekit or from memory."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional
from unittest import mock

import mergekit.merge
from mergekit.architecture import get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from mergekit.scripts.multimerge import load_config, make_tasks
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from evomerge.merge.multi_stage import located, materializer_for
from evomerge.merge.noise import add_noise, layer_positions, relative_std
from evomerge.merge.output_model import routed_out_config
from evomerge.recipe.candidate import Candidate
from evomerge.run_options import RunOptions

RECIPE_FILE = "mergekit_config.yml"


def write_with_mergekit(candidate: Candidate, out: Path, options: Optional[MergeOptions] = None) -> None:
    """mergekit's own `run_merge` (what `mergekit-yaml` runs; mergekit-multi's stages for a multi-stage
    recipe), then evomerge's noise if any.

    The candidate's seed is mergekit's `--random-seed`, so randomized methods reproduce. The config
    written is evomerge's output config, whose per-layer lists follow a route (output_model.py):
    `mergekit-yaml` 0.1.5 cannot write a route to another depth over models with `layer_types`.
    """
    options = (options or MergeOptions(quiet=True)).model_copy(
        update={"random_seed": candidate.seed if (options is None or options.random_seed is None) else options.random_seed}
    )
    out.mkdir(parents=True, exist_ok=True)
    if not candidate.before:
        with _routed_out_configs():
            run_merge(candidate.merge.model_copy(deep=True), str(out), options, config_source=candidate.to_yaml())
        _add_noise_to_folder(candidate, candidate.merge, out, options)
        return
    with tempfile.TemporaryDirectory(prefix="evomerge-stages-") as intermediate, _routed_out_configs():
        _run_stages(candidate, out, options, intermediate)
        folders = {stage.name: str(Path(intermediate) / stage.name) for stage in candidate.before}
        _add_noise_to_folder(candidate, located(candidate.merge, folders), out, options)


@contextlib.contextmanager
def _routed_out_configs() -> Iterator[None]:
    """`run_merge` (mergekit-multi's stages too) writing evomerge's output config instead of mergekit's own."""
    with mock.patch.object(mergekit.merge, "_model_out_config", routed_out_config):
        yield


def _run_stages(candidate: Candidate, out: Path, options: MergeOptions, intermediate: str) -> None:
    """mergekit-multi's own loading and task graph on the candidate's documents; a named final merge,
    which mergekit-multi writes beside the intermediate ones, is moved to `out`."""
    configs, dependencies = load_config(candidate.to_yaml(), intermediate)
    tasks = make_tasks(configs, dependencies, options, intermediate, str(out), lazy=False)
    Executor(tasks, math_device="cpu", storage_device="cpu").execute(desc="Merging stages")
    if candidate.name is not None:
        shutil.copytree(Path(intermediate) / candidate.name, out, dirs_exist_ok=True)
    (out / RECIPE_FILE).write_text(candidate.to_yaml(), encoding="utf-8")


def _add_noise_to_folder(candidate: Candidate, merge: MergeConfiguration, out: Path, options: MergeOptions) -> None:
    if not candidate.noise or not any(candidate.noise):
        return
    arch = get_architecture_info(merge, options)
    positions = layer_positions(arch, AutoConfig.from_pretrained(out, trust_remote_code=options.trust_remote_code))
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(shard)
        for name, tensor in tensors.items():
            scale = relative_std(candidate.noise, positions.get(name, 0.0))
            tensors[name] = add_noise(tensor, name, scale, candidate.seed).contiguous()
        save_file(tensors, shard, metadata=metadata)


def write_in_memory(candidate: Candidate, out: Path, options: RunOptions = RunOptions()) -> None:
    """The resident-model path: materialize in memory, then save the resident model."""
    materializer = materializer_for(candidate, options=options)
    materializer.materialize(candidate)
    save_resident(materializer, candidate, out)


def save_resident(materializer, candidate: Candidate, out: Path) -> None:
    """The resident model as a Hugging Face folder (tied weights written once, as mergekit does),
    its tokenizer, and the candidate's recipe."""
    out.mkdir(parents=True, exist_ok=True)
    materializer.model.save_pretrained(out)
    materializer.tokenizer.save_pretrained(out)
    (out / RECIPE_FILE).write_text(candidate.to_yaml(), encoding="utf-8")
