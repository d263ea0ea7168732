"""What a run reads from outside, fingerprinted: a resumed run must read the same.

A run stores, when it starts, a digest of each parent (its JSON files — config, tokenizer —
and each safetensors file's header, size and 64 blocks of 4 KiB spread over its weights: a
retrained or swapped parent of the same shape changes every block, and reading 256 KiB a file
costs nothing next to loading it), of each lm-eval task (its
configuration and every document it yields, however the task loads them), of the recipe's
fitness module's source, and the versions of the libraries whose arithmetic or prompts
decide a score. `evomerge resume` compares them and names what changed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import struct
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Sequence

from evomerge.recipe import layout
from evomerge.recipe.custom_fitness import load_custom_fitness
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space
from evomerge.scoring.tasks import TaskSuite, recipe_keys

LIBRARIES = ("torch", "transformers", "mergekit", "lm_eval")
Inputs = Dict[str, Dict[str, str]]  # kind -> name -> digest (or version)


def fingerprint(recipe: Recipe) -> Inputs:
    spec = recipe.spec
    tasks = [t.name for t in spec.tasks] + list(spec.report_tasks)
    found: Inputs = {
        "parents": {str(reference): _model_digest(reference)  # a route's: every model it may take
                    for _, reference in layout.parent_references(build_space(recipe).largest_stages())},
        "tasks": _task_digests(recipe, tasks) if tasks else {},
        "versions": {name: version(name) for name in LIBRARIES},
    }
    if spec.fitness:
        function = load_custom_fitness(spec.fitness, recipe.directory, recipe.path)
        found["fitness"] = {spec.fitness: _digest(Path(inspect.getsourcefile(function)).read_bytes())}
    return found


def changes(stored: Inputs, current: Inputs) -> List[str]:
    """What differs, one phrase each: 'parent zoo/rev', 'task zoo_rev_search', 'torch 2.13.0 -> 2.14.0'."""
    found = []
    for kind in sorted(set(stored) | set(current)):
        before, now = stored.get(kind, {}), current.get(kind, {})
        for name in sorted(set(before) | set(now)):
            if before.get(name) == now.get(name):
                continue
            if kind == "versions":
                found.append(f"{name} {before.get(name)} -> {now.get(name)}")
            else:
                state = "added" if name not in before else "gone" if name not in now else "changed"
                found.append(f"{kind.rstrip('s')} {name} ({state})")
    return found


def _digest(*parts: bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(hashlib.sha256(part).digest())
    return hashed.hexdigest()[:16]


def _model_digest(reference) -> str:
    """A local folder's JSON files and safetensors headers and sizes; a Hub id is its name and revision."""
    parts = []
    for path in filter(None, (reference.model, reference.lora)):
        folder = Path(path.path)
        if not folder.is_dir():
            parts.append(f"{path.path}@{path.revision}".encode())
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix == ".json":
                parts += [file.name.encode(), file.read_bytes()]
            elif file.suffix == ".safetensors":
                parts += [file.name.encode(), *_safetensors_sample(file)]
    return _digest(*parts)


def _safetensors_sample(file: Path, blocks: int = 64, block: int = 4096) -> List[bytes]:
    total = file.stat().st_size
    with file.open("rb") as handle:
        header = handle.read(8 + struct.unpack("<Q", handle.read(8))[0])
        start = len(header) + 8
        span = max(total - start - block, 0)
        sample = []
        for index in range(blocks):
            handle.seek(start + span * index // max(blocks - 1, 1))
            sample.append(handle.read(block))
    return [str(total).encode(), header, *sample]


def _task_digests(recipe: Recipe, names: Sequence[str]) -> Dict[str, str]:
    suite = TaskSuite(names, recipe.task_paths(), source=recipe.path, keys=recipe_keys(recipe.spec))
    return {name: _digest(_canonical(task.dump_config()).encode(),
                          *(_canonical(doc).encode() for doc in task.eval_docs),
                          *(_canonical(doc).encode() for doc in (task.fewshot_docs() or [])))
            for name, task in suite.tasks.items()}


def _canonical(value: Any) -> str:
    """JSON of a config or document; a function stands for its module, name and source, not its address."""
    def default(item: Any) -> Any:
        if callable(item):
            try:
                source = inspect.getsource(item)
            except (OSError, TypeError):
                source = ""
            return f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', type(item).__name__)}:" \
                   f"{_digest(source.encode())}"
        return str(item)

    return json.dumps(value, sort_keys=True, default=default)
