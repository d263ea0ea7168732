"""Multi-stage recipes for the tests: a first stage named `blend`, and writing documents as one file."""

from __future__ import annotations

from pathlib import Path

import yaml


def blend(zoo: dict) -> dict:
    """A linear merge of the zoo's pair and rev specialists, named `blend` for later stages to merge."""
    folder = zoo["dir"]
    return {"name": "blend", "merge_method": "linear",
            "models": [{"model": str(folder / "pair"), "parameters": {"weight": 0.6}},
                       {"model": str(folder / "rev"), "parameters": {"weight": 0.4}}],
            "dtype": "float32"}


def write_documents(path: Path, *documents: dict) -> Path:
    """The documents as one YAML file, in mergekit-multi's format."""
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path
