"""What the zoo is for, checked on every build: each specialist masters its own skill and
no other, the base masters none, and a uniform task-arithmetic merge beats every parent.

Training is seeded, but torch picks its vector kernels by the CPU's instruction set, so
the trained weights (and every accuracy) move a little from one CPU model to another.
The levels below are absolute, with room on every side of what builds on different
kernels give, and the tests assert the same levels: never the figures of one build.
"""

from __future__ import annotations

from typing import Dict, List

MASTERED = 0.9  # report accuracy at which a model masters a skill
UNMASTERED = 0.8  # at most this on a skill a model must not master
MERGE_GAIN = 0.1  # the uniform merge's mean accuracy over the best parent's, at least
MERGE_WEIGHT = 0.5  # task-arithmetic weight of every specialist in the merge that is checked

Accuracy = Dict[str, float]  # skill -> report accuracy


class ZooError(Exception):
    """A build that does not have the zoo's properties; names the model and the skill."""


def mean(accuracy: Accuracy) -> float:
    return sum(accuracy.values()) / len(accuracy)


def problems(models: Dict[str, Accuracy], specialty: Dict[str, str], merged: Accuracy) -> List[str]:
    """Every property the zoo lacks, one line each; `specialty` maps a specialist to its skill."""
    found = []
    for name, accuracy in models.items():
        own = specialty.get(name)
        for skill, value in accuracy.items():
            if skill == own and value < MASTERED:
                found.append(f"{name} does not master its own skill {skill}: {value:.3f} < {MASTERED}")
            elif skill != own and value > UNMASTERED:
                found.append(f"{name} should not master {skill}: {value:.3f} > {UNMASTERED}")
    best = max(models, key=lambda name: mean(models[name]))
    if mean(merged) < mean(models[best]) + MERGE_GAIN:
        found.append(f"the uniform task-arithmetic merge (mean {mean(merged):.3f}) does not beat the best parent "
                     f"{best} (mean {mean(models[best]):.3f}) by {MERGE_GAIN}")
    return found


def check(models: Dict[str, Accuracy], specialty: Dict[str, str], merged: Accuracy) -> None:
    found = problems(models, specialty, merged)
    if found:
        raise ZooError("the zoo lacks what it is for: " + "; ".join(found))
