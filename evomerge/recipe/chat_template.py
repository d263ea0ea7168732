"""Whether the scored model's tokenizer has a chat template, from the tokenizer's files alone.

lm-eval refuses `apply_chat_template` for a tokenizer without one, and it would refuse it for
every candidate; this finds that out before the first. The scored model takes mergekit's donor
tokenizer: the base model's, or else the first model of an unordered set, so any of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

from mergekit.config import MergeConfiguration

from evomerge.errors import EvomergeError
from evomerge.recipe.layout import Stage


def _donors(merge: MergeConfiguration, stages: Sequence[Stage]) -> Iterator[Path]:
    """The local folders the merge's tokenizer may come from, through earlier stages' outputs (Hub ids
    and LoRA-merged models are not read here)."""
    produced = {stage.name: stage for stage in stages if stage.name}
    for reference in [merge.base_model] if merge.base_model else merge.referenced_models():
        if reference.model.path in produced:
            yield from _donors(produced[reference.model.path].merge, stages)
        elif reference.lora is None and Path(reference.model.path).is_dir():
            yield Path(reference.model.path)


def has_chat_template(folder: Path) -> bool:
    """As transformers finds one: a chat_template.jinja, chat_template.json or additional template, or
    `chat_template` in tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    if any((folder / "additional_chat_templates").glob("*.jinja")):
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, json.JSONDecodeError):  # no config or a malformed one: loading the tokenizer says what
        return False


def check_chat_template(stages: Sequence[Stage], source: Path, key: str, fix: str) -> None:
    """Refuse a chat template that the scored model's tokenizer cannot apply; `fix` says how to turn it off."""
    lacking = next((folder for folder in _donors(stages[-1].merge, stages) if not has_chat_template(folder)), None)
    if lacking is not None:
        raise EvomergeError(f"the tokenizer of {lacking} has no chat template, so lm-eval cannot apply one to any "
                            f"candidate; {fix}, or give the tokenizer a template (chat_template.jinja)",
                            path=source, key=key)
