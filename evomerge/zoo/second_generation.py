"""Second-generation fine-tunes: a zoo specialist trained further on another skill.

They give `evomerge tree` a known family tree with three generations to recover.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, LlamaForCausalLM

from evomerge.random_state import preserved_random_state
from evomerge.zoo.build import ZooSettings
from evomerge.zoo.skills import held_out_prompts
from evomerge.zoo.train import train


def fine_tune_further(parent: Path, parent_skill: str, new_skill: str, out: Path, *, steps: int = 40,
                      seed: int = 100, settings: ZooSettings = ZooSettings()) -> Path:
    """Train `parent` for `steps` more steps on its own skill and `new_skill` (half each); save to `out`."""
    model = LlamaForCausalLM.from_pretrained(parent)
    tokenizer = AutoTokenizer.from_pretrained(parent)
    mixture = {new_skill: (0.5, 0.0), parent_skill: (0.5, 0.0)}
    with preserved_random_state():
        train(model, mixture, steps=steps, lr=settings.specialist_lr, batch_size=settings.batch_size, seed=seed,
              pad_id=tokenizer.pad_token_id, excluded=held_out_prompts(), desc=f"{parent_skill} then {new_skill}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
