"""Builds the zoo: a base that half-knows every skill, and one specialist per skill.

Deterministic for fixed settings, and cached: a second build with the same settings
reuses the folders it finds.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.errors import EvomergeError
from evomerge.paths import DEFAULT_ZOO_DIR, TASKS_DIR
from evomerge.random_state import preserved_random_state
from evomerge.recipe.schema import EvalSpec
from evomerge.run_options import RunOptions
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo import check
from evomerge.zoo.skills import SKILLS, held_out_prompts
from evomerge.zoo.tokenizer import build_tokenizer
from evomerge.zoo.train import SEQUENCE_LENGTH, train, trained_prompts

MANIFEST = "manifest.json"
SCORING = EvalSpec(batch_size=256)


class ZooSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = 1
    seed: int = 0
    tie_word_embeddings: bool = False
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    batch_size: int = 64
    base_steps: int = 1500
    base_lr: float = 3e-3
    near_miss_rate: float = 0.6  # above 1/2, so the base prefers the near miss and masters no skill
    specialist_steps: int = 150
    specialist_lr: float = 1e-3
    specialist_focus: float = 0.5  # share of a specialist's batch that is its own skill


FAMILIES: Dict[str, ZooSettings] = {
    "llama": ZooSettings(),  # untied embeddings, one key/value head per head
    # The shape of most small models people merge (SmolLM2, Llama 3.2, Qwen2.5): input and
    # output embeddings tied, grouped-query attention (2 key/value heads for 4).
    "tied": ZooSettings(tie_word_embeddings=True, num_kv_heads=2),
}


def zoo_dir(family: str) -> Path:
    """Where a family's zoo lives: zoo for llama, zoo-<family> else, in EVOMERGE_HOME (recipes/ in a checkout)."""
    return DEFAULT_ZOO_DIR if family == "llama" else DEFAULT_ZOO_DIR.with_name(f"zoo-{family}")


def _new_base(settings: ZooSettings, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=2 * SEQUENCE_LENGTH,
        tie_word_embeddings=settings.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(config)


Mixture = Dict[str, Tuple[float, float]]  # skill -> (sampling weight, near-miss rate)


def _schedule(settings: ZooSettings) -> Dict[str, Tuple[Optional[str], Mixture, int, float, int]]:
    """name -> (skill, mixture, steps, lr, seed): the base on every skill, then one specialist per skill."""
    everything = {name: (1.0, settings.near_miss_rate) for name in SKILLS}
    schedule = {"base": (None, everything, settings.base_steps, settings.base_lr, settings.seed)}
    others = (1 - settings.specialist_focus) / (len(SKILLS) - 1)
    for index, name in enumerate(SKILLS):
        mixture = {other: (others, settings.near_miss_rate) for other in SKILLS}
        mixture[name] = (settings.specialist_focus, 0.0)
        schedule[name] = (name, mixture, settings.specialist_steps, settings.specialist_lr, settings.seed + 1 + index)
    return schedule


def _train_models(settings: ZooSettings, tokenizer, common: Dict[str, Any]) -> Dict[str, tuple]:
    """name -> (model, skill, seed): the base, then one specialist per skill fine-tuned from it."""
    base = _new_base(settings, tokenizer)
    models: Dict[str, tuple] = {}
    for name, (skill, mixture, steps, lr, seed) in _schedule(settings).items():
        model = base if skill is None else copy.deepcopy(base)
        train(model, mixture, steps=steps, lr=lr, seed=seed, desc=f"zoo: {name}", **common)
        models[name] = (model, skill, seed)
    return models


def training_prompts(settings: ZooSettings) -> Set[str]:
    """Every prompt a build with these settings trains on (the draws depend only on the seeds)."""
    excluded = held_out_prompts()
    return set().union(*(trained_prompts(mixture, steps=steps, batch_size=settings.batch_size, seed=seed,
                                         excluded=excluded)
                         for _, mixture, steps, _, seed in _schedule(settings).values()))


def _cached(out: Path, settings: ZooSettings) -> Dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("settings") != settings.model_dump():
        return None
    if not all((out / m["path"] / "model.safetensors").is_file() for m in manifest["models"]):
        return None
    return manifest


def _uniform_merge_accuracy(out: Path, suite: TaskSuite) -> Dict[str, float]:
    """Report accuracy of task arithmetic with every specialist at MERGE_WEIGHT, merged in memory."""
    from mergekit.config import MergeConfiguration

    from evomerge.merge.materializer import Materializer
    from evomerge.recipe.candidate import Candidate

    merge = MergeConfiguration.model_validate({
        "merge_method": "task_arithmetic",
        "base_model": str(out / "base"),
        "models": [{"model": str(out / name), "parameters": {"weight": check.MERGE_WEIGHT}} for name in SKILLS],
        "dtype": "float32",
    })
    materializer = Materializer(merge, options=RunOptions(quiet=True))
    materializer.materialize(Candidate(merge=merge, seed=0))
    metrics = LMEvalScorer(suite, materializer.model, materializer.tokenizer, options=SCORING).score()
    return {name: metrics[f"zoo_{name}_report"]["acc"] for name in SKILLS}


def build_zoo(out: Path, settings: ZooSettings = ZooSettings(), force: bool = False,
              verify: bool = True) -> Dict[str, Any]:
    """Train (or reuse) the zoo in `out` and return its manifest.

    With `verify` (always, but for tests of the builder itself) a zoo that lacks the
    properties of `evomerge.zoo.check` raises and writes no manifest, so it is never reused.
    """
    out = Path(out)
    if not force and (manifest := _cached(out, settings)) is not None:
        return manifest
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    excluded = held_out_prompts()
    common = dict(batch_size=settings.batch_size, pad_id=tokenizer.pad_token_id, excluded=excluded)

    with preserved_random_state():  # training seeds torch's global generator, as Hugging Face init needs
        models = _train_models(settings, tokenizer, common)

    suite = TaskSuite([f"zoo_{name}_report" for name in SKILLS], [TASKS_DIR])
    entries = []
    for model_name, (model, skill, seed) in tqdm(models.items(), desc="zoo: save and score"):
        model.save_pretrained(out / model_name)
        tokenizer.save_pretrained(out / model_name)
        metrics = LMEvalScorer(suite, model, tokenizer, options=SCORING).score()
        accuracy = {name: metrics[f"zoo_{name}_report"]["acc"] for name in SKILLS}
        entries.append({"name": model_name, "path": model_name, "skill": skill, "seed": seed, "report_accuracy": accuracy})
    merged = _uniform_merge_accuracy(out, suite)
    if verify:
        try:
            check.check({e["name"]: e["report_accuracy"] for e in entries},
                        {e["name"]: e["skill"] for e in entries if e["skill"]}, merged)
        except check.ZooError as error:
            raise EvomergeError(str(error), path=out) from None
    manifest = {
        "settings": settings.model_dump(),
        "skills": list(SKILLS),
        "models": entries,
        "uniform_merge": {"weight": check.MERGE_WEIGHT, "report_accuracy": merged},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
