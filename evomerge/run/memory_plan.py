"""What a search will need, worked out before anything loads: memory on the device and the host in
each `parents:` mode, genes, documents, the merged architecture.

`evomerge plan` prints it; every search checks it first and refuses a recipe that cannot fit, in
one line naming the cheapest fix, when the device's memory is known (CUDA's free memory, the RAM
on a CPU machine), and even batch size 1 does not fit (scoring halves its batch on out of memory,
so a larger batch costs a retry, not the run). Scoring figures are upper bounds: the logits and their log-softmax in float32 (4 bytes each) and one layer's working
set (attention projections and the MLP) at a time, as a forward pass without gradients holds them,
for every sequence padded to the longest request the recipe's tasks make (tokenized with the
recipe's tokenizer; `max_length` when no tokenizer can be read, e.g. a folder of headers only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from evomerge.errors import SECTION, EvomergeError
from evomerge.merge.footprint import Footprint
from evomerge.merge.materializer import default_device
from evomerge.merge.multi_stage import stages_footprint
from evomerge.recipe.device_defaults import batch_size, scoring_dtype
from evomerge.recipe.loading import Recipe
from evomerge.recipe.space_factory import build_space

GIB = 1024 ** 3
UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """'80GiB', '24 GB', '1e9' -> bytes."""
    found = re.fullmatch(r"\s*((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in UNITS:
        raise EvomergeError(f"expected a size like 80GiB or 24GB, got {text!r}", key="--device-memory")
    return int(float(found.group(1)) * UNITS[found.group(2).lower()])


def local_memory(device_type: str, index: Optional[int] = None) -> Optional[int]:
    """The free memory of a CUDA device, the RAM of a CPU machine; None where unknown."""
    if device_type == "cuda":
        return torch.cuda.mem_get_info(index or 0)[0] if torch.cuda.is_available() else None
    if device_type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 2 ** 20:.2f} MiB"


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    device_type: str
    weights: Footprint
    scoring_dtype: str
    batch_size: Union[int, str]
    max_length: int
    sequence: int  # tokens a scored sequence holds at most
    sequence_source: str  # where that figure comes from
    per_sequence: int  # scoring bytes per sequence in a batch
    workers: int  # workers sharing the device
    memory: Optional[int]  # the device's, given or found; None: unknown
    memory_source: str

    @property
    def batch(self) -> int:
        """The batch the plan sizes: `auto` finds what fits, so it is sized at 1."""
        return 1 if self.batch_size == "auto" else int(self.batch_size)

    def activations(self, batch: Optional[int] = None) -> int:
        return (batch or self.batch) * self.per_sequence

    def device_bytes(self, parents: str, batch: Optional[int] = None, workers: Optional[int] = None) -> int:
        """What the device holds; on a CPU machine, where device and host are one memory, everything."""
        w = self.weights
        own = w.output + w.workspace + self.activations(batch)
        if parents == "device" or self.device_type == "cpu":
            own += w.resident_parents
        return (workers or self.workers) * own

    def host_bytes(self, parents: str) -> int:
        return self.workers * self.weights.resident_parents if parents == "host" and self.device_type != "cpu" else 0

    def fits(self, parents: str, **change) -> bool:
        return self.memory is None or self.device_bytes(parents, **change) <= self.memory

    def refusal(self) -> Optional[str]:
        """None when the recipe fits at batch size 1 (out of memory while scoring halves the batch,
        down to 1: a batch too large costs a retry, not the run) or the memory is unknown; else one
        line naming the cheapest fix."""
        mode = self.recipe.spec.parents
        if self.fits(mode, batch=1):
            return None
        at = " at batch size 1" if self.batch > 1 else ""
        needs = (f"needs {gib(self.device_bytes(mode, batch=1))} on {self.device_type} with parents: {mode}{at}, "
                 f"more than the {gib(self.memory)} of {self.memory_source}")
        if mode == "device" and self.device_type != "cpu" and self.fits("host", batch=1):
            return f"{needs}; set `parents: host` ({gib(self.device_bytes('host', batch=1))} on the device)"
        fewer = next((w for w in range(self.workers - 1, 0, -1) if self.fits(mode, batch=1, workers=w)), None)
        if fewer:
            return f"{needs}; run fewer workers per device ({fewer} fit: --workers or a larger --gpus-per-worker)"
        least = self.device_bytes("host", batch=1, workers=1)
        host = "parents: host, " if self.device_type != "cpu" else ""
        return f"{needs}; even {host}batch size 1 and one worker need {gib(least)}"

    def batch_advice(self) -> Optional[str]:
        """The batch that fits, when the recipe's does not but a smaller one does."""
        mode = self.recipe.spec.parents
        if self.fits(mode):
            return None
        smaller = next((b for b in _halvings(self.batch) if self.fits(mode, batch=b)), None)
        if smaller is None:
            return None
        return (f"at batch {self.batch} the scoring activations do not fit; scoring halves its batch on out of memory, "
                f"to {smaller} here: set a smaller batch, `eval: {{batch_size: {smaller}}}`, to start there")

    def lines(self, documents: Optional[int] = None) -> List[str]:
        w, config, spec = self.weights, self.weights.config, self.recipe.spec
        k = len(w.parents)
        found = [
            f"recipe: {self.recipe.path}",
            f"merged architecture: {config.model_type}, {config.num_hidden_layers} layers, hidden size "
            f"{config.hidden_size}, vocabulary {config.vocab_size}, max_length {self.max_length}",
            f"parents ({k}, in their checkpoint dtypes): {gib(sum(w.parents.values()))}; resident "
            f"{gib(w.resident_parents)}",
            *[f"  {name}: {gib(size)}" for name, size in w.parents.items()],
            f"output model ({self.scoring_dtype}, scored on {self.device_type}): {gib(w.output)}",
            f"merge work space ({w.largest[0]}: {k} inputs + the result in {w.merge_dtype}): {gib(w.workspace)}",
            f"scoring activations (batch {self.batch_size}{' sized at 1' if self.batch_size == 'auto' else ''} x "
            f"{self.sequence} tokens, {self.sequence_source}: logits and log-softmax x 4 B, one layer's hidden "
            f"states): {gib(self.activations())}",
        ]
        memory = f"the {gib(self.memory)} of {self.memory_source}" if self.memory is not None else ""
        per = f" for {self.workers} workers" if self.workers > 1 else ""
        for mode in ("device", "host"):
            chosen = " (the recipe's)" if mode == spec.parents else ""
            fits = "" if not memory else f", fits in {memory}" if self.fits(mode) else f", does NOT fit in {memory}"
            host = f"; {gib(self.host_bytes(mode))} in host memory" if self.host_bytes(mode) else ""
            found.append(f"parents: {mode}{chosen}: {gib(self.device_bytes(mode))} on the device{per}{fits}{host}")
        if (advice := self.batch_advice()) is not None:
            found.append(advice)
        found.append(f"genes: {build_space(self.recipe).dimension}")
        if documents is not None:
            budget = spec.budget.evaluations if spec.budget else 0
            found.append(f"documents: {documents} per evaluation, {documents * budget} per run "
                         f"({budget} evaluations, at most: racing scores fewer)")
        return found


def _halvings(batch: int) -> List[int]:
    sizes = []
    while batch > 1:
        batch //= 2
        sizes.append(batch)
    return sizes


def make_plan(recipe: Recipe, *, device: Optional[str] = None, memory: Optional[int] = None, workers: int = 1,
              trust_remote_code: bool = False) -> Plan:
    """The plan on `device` (default: this machine's), against `memory` (default: the device's own)."""
    from lm_eval.models.utils import resolve_max_length

    target = torch.device(device or default_device())
    spec = recipe.spec
    dtype = scoring_dtype(recipe.merge, spec.eval, target.type)
    weights = stages_footprint(build_space(recipe).largest_stages(), dtype,
                               trust_remote_code=trust_remote_code)
    config = weights.config
    max_length = spec.eval.max_length or resolve_max_length(config)
    sequence, source = _longest_request(recipe, max_length)
    width = torch.empty((), dtype=getattr(torch, dtype or "float32")).element_size()
    intermediate = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    per_token = 2 * config.vocab_size * 4 + (4 * config.hidden_size + 3 * intermediate) * width
    return Plan(recipe, target.type, weights, dtype or "the config's", batch_size(spec.eval, target.type),
                max_length, sequence, source, sequence * per_token, workers,
                memory if memory is not None else local_memory(target.type, target.index),
                "--device-memory" if memory is not None else f"this machine's {target.type}")


def _longest_request(recipe: Recipe, max_length: int) -> Tuple[int, str]:
    """The most tokens a sequence scored in this run holds (search, report and confirmation tasks),
    and where the figure comes from."""
    from evomerge.scoring.tasks import TaskSuite, recipe_keys

    spec = recipe.spec
    searched = [t.name for t in spec.tasks]
    names = searched + list(spec.report_tasks) + list(spec.confirm.tasks)
    tokenizer = _tokenizer(recipe)
    if not names or tokenizer is None:
        return max_length, f"max_length{'' if names else ', no tasks'}{'' if tokenizer else ', no tokenizer found'}"
    suite = TaskSuite(names, recipe.task_paths(), source=recipe.path, keys=recipe_keys(spec), options=spec.eval,
                      seed=spec.seed)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    longest = max(suite.longest_request(task, encode, spec.eval.limit if task in searched else None, max_length)
                  for task in suite.names)
    return longest, f"the longest request of the tasks (max_length {max_length})"


def _tokenizer(recipe: Recipe):
    """The first tokenizer found among the recipe's parents (the merged one is one of theirs; an earlier
    stage's output, named as a model, is no folder to read), or None."""
    from transformers import AutoTokenizer

    from evomerge.recipe import layout

    for _, reference in layout.parent_references(recipe.stages):
        try:
            return AutoTokenizer.from_pretrained(reference.model.path, revision=reference.model.revision)
        except (OSError, ValueError):
            continue
    return None


def documents_per_evaluation(recipe: Recipe) -> int:
    """Documents one full evaluation scores, all search tasks together (lm-eval's tasks are built for it)."""
    from evomerge.run.worker import held_back_split, scoring

    suite, _ = scoring(recipe)
    if suite is None:
        return 0
    split = held_back_split(recipe, suite)
    return sum(len(split.search[task]) if split else suite.documents(task, recipe.spec.eval.limit)
               for task in suite.names)


def check_fits(recipe: Recipe, *, device: Optional[str], workers: int, trust_remote_code: bool = False) -> None:
    """Before a search: refuse, in one line, a recipe that cannot fit this machine's device."""
    problem = make_plan(recipe, device=device, workers=workers, trust_remote_code=trust_remote_code).refusal()
    if problem:
        raise EvomergeError(problem, path=recipe.path, key=f"{SECTION}.parents")
