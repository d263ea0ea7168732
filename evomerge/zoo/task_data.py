"""The zoo's lm-eval task data, recipes/tasks/data/zoo_<skill>.<split>.jsonl: the search and report
splits the builds never train on, and a confirm split that is also apart from every prompt the
tiny and real zoos' builds draw, so a search's finalists are confirmed on documents no parent saw."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Set

from evomerge.zoo import real
from evomerge.zoo.build import FAMILIES, training_prompts
from evomerge.zoo.skills import SKILLS, confirm_split, held_out, held_out_prompts


@functools.cache
def trained_on() -> Set[str]:
    """Every prompt the zoo builds train on, with their default settings."""
    return set().union(*(training_prompts(settings) for settings in FAMILIES.values()), real.training_prompts())


def write_task_data(directory: Path) -> None:
    """Write recipes/tasks/data; a test checks the shipped files match."""
    directory.mkdir(parents=True, exist_ok=True)
    avoid = held_out_prompts() | trained_on()
    for skill in SKILLS.values():
        splits = {**held_out(skill), "confirm": confirm_split(skill, avoid)}
        for split, rows in splits.items():
            lines = "".join(json.dumps(row) + "\n" for row in rows)
            (directory / f"zoo_{skill.name}.{split}.jsonl").write_text(lines, encoding="utf-8")
