"""Training loop for the zoo: answer-only next-token loss on sampled skill examples."""

from __future__ import annotations

import itertools
import math
import random
from typing import Dict, Iterator, Set, Tuple

import torch
from tqdm.auto import tqdm

from evomerge.zoo.skills import ALPHABET, SKILLS

TOKEN_ID = {char: index for index, char in enumerate(ALPHABET)}
SEQUENCE_LENGTH = 16


def examples(mixture: Dict[str, Tuple[float, float]], rng: random.Random,
             excluded: Set[str]) -> Iterator[Tuple[str, str]]:
    """(prompt, answer) as training draws them; `mixture` maps a skill to (sampling weight, near-miss rate).
    The draws depend only on `rng`, so what a build trains on can be listed without training."""
    names = list(mixture)
    weights = [mixture[name][0] for name in names]
    while True:
        skill = SKILLS[rng.choices(names, weights)[0]]
        while True:
            prompt, answer = skill.example(rng, near_miss=rng.random() < mixture[skill.name][1])
            if prompt not in excluded:
                break
        yield prompt, answer


def trained_prompts(mixture: Dict[str, Tuple[float, float]], *, steps: int, batch_size: int, seed: int,
                    excluded: Set[str]) -> Set[str]:
    """Every prompt `train` with these settings sees."""
    draws = examples(mixture, random.Random(seed), excluded)
    return {prompt for prompt, _ in itertools.islice(draws, steps * batch_size)}


def _batch(
    mixture: Dict[str, Tuple[float, float]],
    rng: random.Random,
    size: int,
    pad_id: int,
    excluded: Set[str],
):
    """Sample (ids, loss mask)."""
    ids = torch.full((size, SEQUENCE_LENGTH), pad_id, dtype=torch.long)
    mask = torch.zeros((size, SEQUENCE_LENGTH))
    for row, (prompt, answer) in zip(range(size), examples(mixture, rng, excluded)):
        tokens = [TOKEN_ID[c] for c in prompt + answer + "\n"]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, len(prompt) : len(tokens)] = 1.0
    return ids, mask


def train(
    model: torch.nn.Module,
    mixture: Dict[str, Tuple[float, float]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    excluded: Set[str],
    desc: str,
) -> float:
    """Train in place with AdamW and a warm-up + cosine schedule; returns the last loss."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in tqdm(range(steps), desc=desc, leave=False):
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        ids, mask = _batch(mixture, rng, batch_size, pad_id, excluded)
        logits = model(input_ids=ids).logits[:, :-1]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        loss = (token_loss * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()
