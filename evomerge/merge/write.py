"""Writes a candidate as a Hugging Face model folder, through mergekit or from memory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mergekit.architecture import get_architecture_info
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from evomerge.merge.noise import add_noise, layer_positions, relative_std
from evomerge.recipe.space import Candidate

RECIPE_FILE = "mergekit_config.yml"


def write_with_mergekit(candidate: Candidate, out: Path, options: Optional[MergeOptions] = None) -> None:
    """mergekit's own `run_merge` (what `mergekit-yaml` runs), then evomerge's noise if any.

    The candidate's seed is mergekit's `--random-seed`, so randomized methods reproduce.
    """
    options = (options or MergeOptions(quiet=True)).model_copy(
        update={"random_seed": candidate.seed if (options is None or options.random_seed is None) else options.random_seed}
    )
    out.mkdir(parents=True, exist_ok=True)
    run_merge(candidate.merge.model_copy(deep=True), str(out), options, config_source=candidate.to_yaml())
    if candidate.noise and any(candidate.noise):
        _add_noise_to_folder(candidate, out, options)


def _add_noise_to_folder(candidate: Candidate, out: Path, options: MergeOptions) -> None:
    arch = get_architecture_info(candidate.merge, options)
    positions = layer_positions(arch, AutoConfig.from_pretrained(out, trust_remote_code=options.trust_remote_code))
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(shard)
        for name, tensor in tensors.items():
            scale = relative_std(candidate.noise, positions.get(name, 0.0))
            tensors[name] = add_noise(tensor, name, scale, candidate.seed).contiguous()
        save_file(tensors, shard, metadata=metadata)


def write_in_memory(candidate: Candidate, out: Path, device: Optional[str] = None, trust_remote_code: bool = False) -> None:
    """The resident-model path: materialize in memory, then save the resident model."""
    from evomerge.merge.materializer import Materializer

    materializer = Materializer(candidate.merge, device=device, trust_remote_code=trust_remote_code)
    materializer.materialize(candidate)
    save_resident(materializer, candidate, out)


def save_resident(materializer, candidate: Candidate, out: Path) -> None:
    """The resident model as a Hugging Face folder (tied weights written once, as mergekit does),
    its tokenizer, and the candidate's recipe."""
    out.mkdir(parents=True, exist_ok=True)
    materializer.model.save_pretrained(out)
    materializer.tokenizer.save_pretrained(out)
    (out / RECIPE_FILE).write_text(candidate.to_yaml(), encoding="utf-8")
