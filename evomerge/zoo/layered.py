"""A zoo problem where the route matters: two specialists whose skills live in different layers.

Both are fine-tuned from the llama zoo's base with every weight frozen but one half of the layers:
`pair` learns in the lower half, `rev` in the upper half. Neither knows the other's skill; a model
that knows both takes the lower layers of one and the upper layers of the other, which a route can
say directly (and a per-layer parameter merge can reach too). Built on the CPU in well under a minute
from the base, cached like the zoo.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.paths import TASKS_DIR
from evomerge.random_state import preserved_random_state
from evomerge.scoring.scorer import LMEvalScorer
from evomerge.scoring.tasks import TaskSuite
from evomerge.zoo.build import MANIFEST, SCORING, ZooSettings
from evomerge.zoo.skills import SKILLS, held_out_prompts
from evomerge.zoo.train import train

SPECIALISTS = {"pair-low": ("pair", "lower"), "rev-high": ("rev", "upper")}


def build_layered_zoo(out: Path, base: Path, *, steps: int = 300, lr: float = 3e-3, score: bool = True) -> Dict[str, Any]:
    """Train (or reuse) the two layered specialists of `base` in `out`; returns the manifest."""
    out = Path(out)
    settings = {"base": str(Path(base).resolve()), "steps": steps, "lr": lr,
                "specialists": {name: list(place) for name, place in SPECIALISTS.items()}}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text())["settings"] == settings:
        return json.loads(manifest_path.read_text())
    zoo = ZooSettings()
    start = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    layers = start.config.num_hidden_layers
    suite = TaskSuite([f"zoo_{name}_report" for name in SKILLS], [TASKS_DIR]) if score else None
    entries = []
    for index, (name, (skill, half)) in enumerate(SPECIALISTS.items()):
        model = copy.deepcopy(start)
        chosen = range(layers // 2) if half == "lower" else range(layers // 2, layers)
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_(any(f".layers.{i}." in parameter_name for i in chosen))
        mixture = {other: ((1 - zoo.specialist_focus) / (len(SKILLS) - 1), zoo.near_miss_rate) for other in SKILLS}
        mixture[skill] = (zoo.specialist_focus, 0.0)
        with preserved_random_state():
            train(model, mixture, steps=steps, lr=lr, batch_size=zoo.batch_size, seed=100 + index,
                  pad_id=tokenizer.pad_token_id, excluded=held_out_prompts(), desc=f"layered zoo: {name}")
        model.requires_grad_(False)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
        accuracy = {}
        if suite:
            metrics = LMEvalScorer(suite, model, tokenizer, options=SCORING).score()
            accuracy = {s: metrics[f"zoo_{s}_report"]["acc"] for s in SKILLS}
        entries.append({"name": name, "path": name, "skill": skill, "layers": list(chosen), "report_accuracy": accuracy})
    manifest = {"settings": settings, "models": entries}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
