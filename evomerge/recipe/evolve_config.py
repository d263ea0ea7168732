"""A mergekit-evolve config file, written as the evomerge recipe it stands for.

The recipe's mergekit keys are the genome's starting point (what `mergekit-yaml` merges);
its `evomerge:` section holds the genome, the tasks and mergekit-evolve's defaults (CMA-ES
with sigma0 1/6, 100 evaluations). `evomerge search` reads a config this way, and `evomerge
convert` writes the same text to a file for editing. mergekit's own genome (`genome_of`, `start_genotype`)
is built here, below loading, and genome.py's search space decodes with it.
Its defaults turn the chat template on: a config whose models' tokenizer has none is refused here,
naming the config's key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import yaml
from mergekit.config import ConfigYamlDumper
from mergekit.evo.config import EvolMergeConfiguration
from mergekit.evo.genome import ModelGenome

from evomerge.errors import SECTION, EvomergeError, did_you_mean, validated
from evomerge.recipe.chat_template import check_chat_template
from evomerge.recipe.layout import Stage
from evomerge.recipe.references import map_model_references, resolve_model_path
from evomerge.recipe.schema import GenomeSpec

MAX_FEVALS = 100  # mergekit-evolve's --max-fevals default
SEED = 0  # its --random-seed default


def recipe_text(raw: Dict[str, Any], path: Path, out_dir: Optional[Path] = None) -> str:
    """The recipe for the config `raw` read from `path`; local model paths are made relative to
    `out_dir` (default: the config's folder), where the recipe will live."""
    path, out_dir = Path(path), Path(out_dir or Path(path).parent)
    for key in raw:
        if key not in EvolMergeConfiguration.model_fields:
            raise EvomergeError(f"unknown mergekit-evolve key{did_you_mean(key, EvolMergeConfiguration.model_fields)}",
                                path=path, key=key)
    config = validated(EvolMergeConfiguration, raw, path, None)
    if config.shuffle:
        raise EvomergeError("evomerge scores every candidate on the same documents; remove it (racing, "
                            "evomerge.eval.racing, shuffles them once per run)", path=path, key="shuffle")
    genome = {**raw["genome"], "random_init": config.random_init}
    resolved = map_model_references(genome, lambda ref: resolve_model_path(ref, path.parent))
    spec = validated(GenomeSpec, resolved, path, "genome")
    mergekit_genome = genome_of(spec, path, "genome")
    start = mergekit_genome.genotype_merge_config(start_genotype(mergekit_genome, spec, SEED))
    if config.apply_chat_template:
        check_chat_template([Stage(None, start)], path, "apply_chat_template",
                            "it is mergekit-evolve's default: set `apply_chat_template: false` in the config")
    written = {}

    def relative(reference: str) -> str:
        """As the config names it, or relative to `out_dir` where it lives elsewhere."""
        local = resolve_model_path(reference, path.parent)
        moved = local != reference and out_dir.resolve() != path.parent.resolve()
        written[local] = os.path.relpath(local, out_dir.resolve()) if moved else reference
        return written[local]

    genome = map_model_references(genome, relative)
    recipe = map_model_references(start.model_dump(mode="json", exclude_defaults=True),
                                  lambda ref: written.get(ref, ref))
    recipe = {"merge_method": recipe.pop("merge_method"), **recipe, SECTION: _section(config, genome)}
    return yaml.dump(recipe, Dumper=ConfigYamlDumper, sort_keys=False)


def _section(config: EvolMergeConfiguration, genome: Dict[str, Any]) -> Dict[str, Any]:
    section: Dict[str, Any] = {
        "seed": SEED,
        "genome": {k: v for k, v in genome.items() if k != "random_init" or v},
        "tasks": [{"name": t.name, "metric": t.metric.split(",")[0], "weight": t.weight} for t in config.tasks],
        "searcher": {"name": "cma"},  # sigma0 1/6 of each range by default, as mergekit-evolve's
        "budget": {"evaluations": MAX_FEVALS},
    }
    evaluation = {"limit": config.limit, "num_fewshot": config.num_fewshot,
                  "apply_chat_template": config.apply_chat_template,
                  "fewshot_as_multiturn": config.fewshot_as_multiturn and config.apply_chat_template}
    section["eval"] = {k: v for k, v in evaluation.items() if v is not None and v is not False}  # 0 stays
    return section


def genome_of(spec: GenomeSpec, path: Path, key: str) -> ModelGenome:
    """mergekit's ModelGenome, with its refusals as one line naming the file and the genome's key."""
    if spec.merge_method == "slerp" and len(spec.models) > 2:
        raise EvomergeError(f"a slerp genome of {len(spec.models)} models picks its pair per candidate; evomerge "
                            "keeps one structure per run (its parents stay resident), so give two models",
                            path=path, key=f"{key}.models")
    try:
        return ModelGenome(spec)
    except (AssertionError, OSError, ValueError) as error:
        raise EvomergeError(f"mergekit-evolve refuses the genome: {error}", path=path, key=key) from None


def start_genotype(genome: ModelGenome, spec: GenomeSpec, seed: int) -> np.ndarray:
    """mergekit-evolve's x0 (weights 1/n, densities 1), or its random start drawn from the run's seed."""
    initial = genome.initial_genotype().reshape(-1).numpy().astype(float)
    if spec.random_init:
        return np.random.default_rng(seed).uniform(0.0, 1.0, initial.shape)
    return initial
