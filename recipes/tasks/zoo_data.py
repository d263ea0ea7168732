"""lm-eval `custom_dataset` hook for the zoo's tasks: reads the JSONL files beside it."""

import json
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"


def load(skill: str, **_metadata) -> datasets.DatasetDict:
    splits = {}
    for path in sorted(DATA_DIR.glob(f"zoo_{skill}.*.jsonl")):
        split = path.name.split(".")[1]
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        splits[split] = datasets.Dataset.from_list(rows)
    if not splits:
        raise FileNotFoundError(f"no data for skill {skill!r} in {DATA_DIR}")
    return datasets.DatasetDict(splits)
