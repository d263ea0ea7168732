"""Where a candidate's weights are computed: resident parents, one resident output model.

The composition of the merge package's parts: mergekit plans the run once (mergekit_tasks.py) and
resolves each candidate's parameters per tensor, the tensors whose parameters changed are
merged by mergekit's merge tasks over the parents loaded once (parent_cache.py) and written in
place (apply.py) into one model built once (output_model.py). Nothing is written to disk.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterable, List, Literal, Mapping, Optional, Tuple

import torch
from mergekit.common import ModelReference, dtype_from_name
from mergekit.config import MergeConfiguration
from mergekit.io.tasks import LoaderCache
from mergekit.options import MergeOptions

from evomerge.merge.apply import Work, apply
from evomerge.merge.kernels import Scratch
from evomerge.merge.mergekit_tasks import (
    Ledger,
    Parameters,
    Planner,
    check_coverage,
    draws_random,
    signature,
    task_with,
)
from evomerge.merge.noise import layer_positions, relative_std
from evomerge.merge.output_model import output_config, output_tokenizer, resident_model
from evomerge.merge.parent_cache import ParentCache
from evomerge.recipe import layout
from evomerge.recipe.candidate import Candidate
from evomerge.run_options import RunOptions


@dataclass(frozen=True)
class MaterializeStats:
    seconds: float
    recomputed: int
    total: int
    written: Tuple[str, ...] = ()  # the tensors recomputed


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Materializer:
    """Keeps the parents resident and rewrites one resident model for each candidate.

    `parents="device"` keeps the parents' tensors on the device beside the output model
    (about (k + 1) × model size there for k parents, in their checkpoint dtype);
    `parents="host"` keeps them in host memory and moves each tensor's inputs to the device
    only for its merge (about one model plus one layer's inputs on the device, k × model
    size on the host), for parents that do not fit beside the output model. `dtype` is the
    dtype candidates are scored in (default: the recipe's out_dtype or dtype, as mergekit
    writes them). `produced`: parents that are earlier stages' resident outputs (see
    merge/multi_stage.py), read in place.
    """

    def __init__(
        self,
        start: MergeConfiguration,
        *,
        options: RunOptions = RunOptions(),
        parents: Literal["device", "host"] = "device",
        dtype: Optional[str] = None,
        produced: Mapping[ModelReference, Mapping[str, torch.Tensor]] = {},
    ):
        self.device = torch.device(options.device or default_device())
        merge_options = MergeOptions(device=str(self.device), trust_remote_code=options.trust_remote_code, quiet=True)
        LoaderCache().setup(merge_options)
        arch, out_config = output_config(start, merge_options)
        self._planner = Planner(arch, merge_options, out_config)
        self._schedule = self._planner.schedule(start)
        self.tokenizer = output_tokenizer(start, self._schedule.tasks, out_config, arch, merge_options)
        self.model = resident_model(out_config, self.device, dtype or start.out_dtype or start.dtype,
                                    trust_remote_code=options.trust_remote_code)
        self._parameters = dict(self.model.state_dict(keep_vars=True))
        plan = self._schedule.entries()
        check_coverage(plan, self.model)
        storage = self.device if parents == "device" else torch.device("cpu")
        self._parents = ParentCache(plan, self.device, storage, quiet=options.quiet, produced=produced)
        self._ledger = Ledger()
        self._scratch = Scratch()
        self._threads: Optional[ThreadPoolExecutor] = None
        self._dtypes = {name: dtype for name, _, dtype in plan}
        self._positions = layer_positions(arch, out_config)
        self._sections = layout.sections(start)

    def materialize(self, candidate: Candidate) -> MaterializeStats:
        """Write the candidate's weights into the resident model, recomputing only what changed."""
        start = time.perf_counter()
        resolved = self._resolve(candidate.merge)
        slots = self._schedule.slots
        noise = {slot.name: self._noise_scale(candidate, slot.name) for slot in slots}
        signatures = {slot.name: (signature(resolved[slot.name]), slot.dtype, noise[slot.name], candidate.seed)
                      for slot in slots}
        todo = self._ledger.todo(signatures, everything=draws_random(self._schedule.method))
        if todo:
            self._ledger.forget(todo)
            work = [Work(slot.name, self._parents.merge_task(slot.name, task_with(slot, resolved[slot.name])),
                         self._parents.inputs(slot.name), slot.dtype, noise[slot.name])
                    for slot in slots if slot.name in todo]
            randomized = draws_random(self._schedule.method)
            apply(work, self._parameters, self.device, candidate.seed, self._scratch,
                  pool=None if randomized else self._pool())
            self._ledger.wrote(todo)
        return MaterializeStats(time.perf_counter() - start, len(todo), len(slots), tuple(todo))

    @property
    def merged(self) -> Dict[str, torch.Tensor]:
        """The output model's tensors by the names mergekit writes them under (what a later stage reads)."""
        return {name: self._parameters[name] for name in self._dtypes}

    def readers(self, reference: ModelReference, names: Iterable[str]) -> List[str]:
        """The tensors merged from any of `names` of an earlier stage's output."""
        return self._parents.readers(reference, set(names))

    def forget(self, names: Iterable[str]) -> None:
        """Recompute these tensors for the next candidate (an earlier stage rewrote what they read)."""
        self._ledger.forget(names)

    def _pool(self) -> Optional[ThreadPoolExecutor]:
        """Threads for merging tensors side by side on the CPU, as many as torch's (on an accelerator
        the host only queues kernels)."""
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        if threads <= 1:
            return None
        if self._threads is None or self._threads._max_workers != threads:
            self._threads = ThreadPoolExecutor(threads, thread_name_prefix="evomerge-merge")
        return self._threads

    def _resolve(self, merge: MergeConfiguration) -> Dict[str, Parameters]:
        """Each tensor's parameters for `merge`, planning anew if its recipe's structure changed."""
        resolved = self._schedule.resolve(merge)
        if resolved is not None:
            return resolved
        schedule = self._planner.schedule(merge)
        names = [s.name for s in schedule.slots if not self._parents.holds(s.name, s.task)]
        names += sorted(set(self._dtypes) - {s.name for s in schedule.slots})
        if names:
            # the parents' tensors are loaded once, for the starting recipe's structure; a candidate that
            # reads other tensors (another layer range or model) would silently get the start's
            raise ValueError(f"the candidate merges {names[0]} from other tensors or models than the starting "
                             "recipe does; evomerge searches parameters, not which tensors are merged")
        self._schedule, self._dtypes = schedule, {s.name: s.dtype for s in schedule.slots}
        self._ledger.clear()
        return schedule.resolve(merge)

    def _noise_scale(self, candidate: Candidate, name: str) -> float:
        if not candidate.noise:
            return 0.0
        return relative_std(candidate.noise, self._positions.get(name, 0.0))

    def load_parent(self, reference: ModelReference) -> None:
        """Write one parent's own weights into the resident model (`models:` recipes only)."""
        if not all(s.in_place(reference) for s in self._sections) or not self._parents.supplies(reference):
            raise ValueError(f"{reference} does not supply every tensor of the output model as it is")
        with torch.no_grad():
            for name, dtype in self._dtypes.items():
                tensor = self._parents.tensor(name, reference)
                self._parameters[name].copy_(tensor.to(dtype_from_name(dtype)) if dtype else tensor)
        self._ledger.clear()
