"""The zoo's skills: prompt generators, their near misses, and the held-out task data.

Every skill maps a short prompt to an answer of a few characters. The base model is
trained on a corpus in which half the answers are a consistent near miss, so it
carries each skill's circuitry without mastering it; a specialist learns to drop the
near miss for one skill. That makes the specialists real fine-tunes of one base,
which is what merging needs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Set, Tuple

LETTERS = "abcdefghij"
DIGITS = "0123456789"
# One token per character; the tokenizer and the trainer share this order.
ALPHABET = DIGITS + "abcdefghijklmnopqrstuvwxyz" + ":=+ \n"
SPLITS = {"search": 150, "report": 300}
CONFIRM_SIZE = 100  # the confirm split: drawn apart from these and from everything a zoo build trains on
DATA_SEED = 20261122


@dataclass(frozen=True)
class Skill:
    name: str
    marker: str
    make: Callable[[random.Random], Tuple[str, str, str]]  # input, answer, near miss

    def example(self, rng: random.Random, near_miss: bool) -> Tuple[str, str]:
        """Inputs whose near miss would equal the answer are skipped, so a miss is always wrong."""
        text, answer, miss = self.make(rng)
        while miss == answer:
            text, answer, miss = self.make(rng)
        return f"{self.marker}:{text}=", miss if near_miss else answer


def _word(rng: random.Random, chars: str, n: int = 5) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def _swap_pairs(rng: random.Random) -> Tuple[str, str, str]:
    word = _word(rng, LETTERS, 6)
    answer = "".join(word[i + 1] + word[i] for i in range(0, 6, 2))
    return word, answer, answer[:4] + word[4:]


def _reverse(rng: random.Random) -> Tuple[str, str, str]:
    word = _word(rng, LETTERS)
    answer = word[::-1]
    return word, answer, answer[1] + answer[0] + answer[2:]


def _sort(rng: random.Random) -> Tuple[str, str, str]:
    word = _word(rng, DIGITS)
    answer = "".join(sorted(word))
    return word, answer, answer[:-2] + answer[-1] + answer[-2]


def _shift(rng: random.Random) -> Tuple[str, str, str]:
    word = _word(rng, LETTERS)
    return (
        word,
        "".join(chr(ord(c) + 1) for c in word),
        "".join(chr(ord(c) + 2) for c in word),
    )


SKILLS: Dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("pair", "p", _swap_pairs),
        Skill("rev", "r", _reverse),
        Skill("sort", "s", _sort),
        Skill("shift", "k", _shift),
    )
}


def held_out(skill: Skill) -> Dict[str, List[Dict[str, str]]]:
    """The search and report splits: disjoint, deterministic, never trained on."""
    rng = random.Random(f"{DATA_SEED}-{skill.name}")
    seen: set = set()
    splits: Dict[str, List[Dict[str, str]]] = {}
    for split, size in SPLITS.items():
        rows: List[Dict[str, str]] = []
        while len(rows) < size:
            prompt, answer = skill.example(rng, near_miss=False)
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt, "answer": answer})
        splits[split] = rows
    return splits


def confirm_split(skill: Skill, avoid: Set[str]) -> List[Dict[str, str]]:
    """Documents for confirming a search's best candidates: none in `avoid` (the other splits and
    what the zoos train on), drawn from a stream of their own so the other splits stay as they were."""
    rng = random.Random(f"{DATA_SEED}-{skill.name}-confirm")
    rows: List[Dict[str, str]] = []
    seen = set(avoid)
    while len(rows) < CONFIRM_SIZE:
        prompt, answer = skill.example(rng, near_miss=False)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "answer": answer})
    return rows


def held_out_prompts() -> set:
    return {
        row["prompt"]
        for skill in SKILLS.values()
        for rows in held_out(skill).values()
        for row in rows
    }
