"""Builds the zoo: a base that half-knows every skill, and one specialist per skill.

Deterministic for fixed settings, and cached: a second build with the same settings
reuses the folders it finds.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Dict

import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.evaluate import LMEvalScorer, TaskSuite
from evomerge.paths import TASKS_DIR
from evomerge.random_state import preserved_random_state
from evomerge.zoo.skills import SKILLS, held_out_prompts
from evomerge.zoo.tokenizer import build_tokenizer
from evomerge.zoo.train import SEQUENCE_LENGTH, train

MANIFEST = "manifest.json"


class ZooSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = 1
    seed: int = 0
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    batch_size: int = 64
    base_steps: int = 1500
    base_lr: float = 3e-3
    near_miss_rate: float = 0.5
    specialist_steps: int = 150
    specialist_lr: float = 1e-3
    specialist_focus: float = 0.5  # share of a specialist's batch that is its own skill


def _new_base(settings: ZooSettings, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=2 * SEQUENCE_LENGTH,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(config)


def _train_models(settings: ZooSettings, tokenizer, common: Dict[str, Any]) -> Dict[str, tuple]:
    """name -> (model, skill, seed): the base, then one specialist per skill fine-tuned from it."""
    base = _new_base(settings, tokenizer)
    everything = {name: (1.0, settings.near_miss_rate) for name in SKILLS}
    train(base, everything, steps=settings.base_steps, lr=settings.base_lr,
          seed=settings.seed, desc="zoo: base", **common)
    models = {"base": (base, None, settings.seed)}
    for index, name in enumerate(SKILLS):
        specialist = copy.deepcopy(base)
        others = (1 - settings.specialist_focus) / (len(SKILLS) - 1)
        mixture = {other: (others, settings.near_miss_rate) for other in SKILLS}
        mixture[name] = (settings.specialist_focus, 0.0)
        seed = settings.seed + 1 + index
        train(specialist, mixture, steps=settings.specialist_steps, lr=settings.specialist_lr,
              seed=seed, desc=f"zoo: {name}", **common)
        models[name] = (specialist, name, seed)
    return models


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


def build_zoo(out: Path, settings: ZooSettings = ZooSettings(), force: bool = False) -> Dict[str, Any]:
    """Train (or reuse) the zoo in `out` and return its manifest."""
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
        metrics = LMEvalScorer(suite, model, tokenizer, batch_size=256).score()
        accuracy = {name: metrics[f"zoo_{name}_report"]["acc"] for name in SKILLS}
        entries.append({"name": model_name, "path": model_name, "skill": skill, "seed": seed, "report_accuracy": accuracy})
    manifest = {
        "settings": settings.model_dump(),
        "skills": list(SKILLS),
        "models": entries,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
