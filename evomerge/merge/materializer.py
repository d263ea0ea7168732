"""Where a candidate's weights are computed: resident parents, one resident output model.

Each candidate is planned by mergekit's own `MergePlanner` (so gradients, filters and
parameter precedence are mergekit's) and executed by mergekit's own `Executor`, with the
parents' gathered tensors handed in as cached values that stay on the device for the
whole run. The merged tensors are copied in place into one resident model; nothing is
written to disk.

mergekit 0.1.5's `MergePlanner.plan_in_memory()` raises `TypeError: Can't instantiate
abstract class Task[Tensor]` (its `ReturnTensor` validates the merge task against the
abstract generic type). `plan_to_disk()` builds the same merge tasks without touching
the disk until executed, so the tasks are taken from there and its writer is never run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Literal, Mapping, Optional, Tuple, Union

import torch
import transformers
from mergekit import merge_methods
from mergekit.architecture import get_architecture_info
from mergekit.common import ImmutableMap, ModelReference, dtype_from_name
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor, Task, TaskUniverse
from mergekit.io.tasks import LoaderCache, SaveTensor
from mergekit.merge import _get_donor_model, _model_out_config, _update_config_vocab
from mergekit.merge_methods.generalized_task_arithmetic import (
    GeneralizedTaskArithmeticMerge,
)
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner
from mergekit.sparsify import SparsificationMethod
from mergekit.tokenizer import BuildTokenizer, TokenizerInfo
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from evomerge.merge.noise import add_noise, layer_positions, relative_std
from evomerge.random_state import preserved_random_state
from evomerge.recipe import layout
from evomerge.recipe.space import Candidate

PlanEntry = Tuple[str, ExecuteMergeMethodTask, Optional[str]]  # tensor name, merge task, output dtype


def task_key(value: Any) -> Hashable:
    """A structural key for a mergekit task.

    mergekit's tasks hold `ImmutableMap`s, which compare by identity, so two plans of
    the same recipe give tasks that are never equal; this key compares their contents.
    """
    if isinstance(value, BaseModel):
        return (type(value).__name__,) + tuple((f, task_key(getattr(value, f))) for f in type(value).model_fields)
    if isinstance(value, (ImmutableMap, Mapping)):
        return tuple(sorted(((task_key(k), task_key(v)) for k, v in value.items()), key=repr))
    if isinstance(value, (list, tuple)):
        return tuple(task_key(v) for v in value)
    return value


def _merge_key(task: ExecuteMergeMethodTask) -> Hashable:
    """What decides a tensor's merged value besides its inputs, which are fixed for a run's structure."""
    return tuple((f, task_key(getattr(task, f))) for f in type(task).model_fields if f != "gather_tensors")


@dataclass(frozen=True)
class MaterializeStats:
    seconds: float
    recomputed: int
    total: int


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def draws_random(method_name: str) -> bool:
    """Methods whose result depends on the random generator (DARE, DELLA, arcee_fusion's sampling)."""
    method = merge_methods.get(method_name)
    if isinstance(method, GeneralizedTaskArithmeticMerge):
        return method.sparsification_method in (SparsificationMethod.random, SparsificationMethod.della_magprune)
    return method_name == "arcee_fusion"


class Materializer:
    """Keeps the parents resident and rewrites one resident model for each candidate.

    `parents="device"` keeps the parents' tensors on the device beside the output model
    (about (k + 1) × model size there for k parents); `parents="host"` keeps them in host
    memory and moves each tensor's inputs to the device only for its merge (about one
    model plus one layer's inputs on the device, k × model size on the host), for parents
    that do not fit beside the output model. `dtype` is the dtype candidates are scored in
    (default: the recipe's out_dtype or dtype, as mergekit writes them).
    """

    def __init__(
        self,
        start: MergeConfiguration,
        *,
        device: Optional[Union[str, torch.device]] = None,
        parents: Literal["device", "host"] = "device",
        dtype: Optional[str] = None,
        trust_remote_code: bool = False,
        quiet: bool = False,
    ):
        self.device = torch.device(device or default_device())
        self.parent_device = self.device if parents == "device" else torch.device("cpu")
        self.quiet = quiet
        self.options = MergeOptions(device=str(self.device), trust_remote_code=trust_remote_code, quiet=True)
        LoaderCache().setup(self.options)
        self.arch = get_architecture_info(start, self.options)
        self.out_config = _model_out_config(start, self.arch, trust_remote_code=trust_remote_code)
        planned = self._planned_tasks(start)
        self.tokenizer = self._tokenizer(start, planned)
        dtype = dtype_from_name(dtype or start.out_dtype or start.dtype) or getattr(self.out_config, "dtype", None)
        with torch.device(self.device), no_init_weights():
            self.model = AutoModelForCausalLM.from_config(
                self.out_config, dtype=dtype, trust_remote_code=trust_remote_code
            )
        # from_config leaves tied weights (tie_word_embeddings: lm_head = embed_tokens) untied
        # under transformers 5; tie them as from_pretrained and mergekit's output do.
        self.model.tie_weights()
        self.model.eval().requires_grad_(False)
        self._parameters = dict(self.model.state_dict(keep_vars=True))
        self._positions = layer_positions(self.arch, self.out_config)
        plan = self._plan_entries(planned)
        self._check_coverage(plan)
        self._inputs = self._load_inputs(plan)
        self._gathers = {name: (task_key(task.gather_tensors), dtype) for name, task, dtype in plan}
        self._sections = layout.sections(start)
        self._written: Dict[str, tuple] = {}

    def _planned_tasks(self, merge: MergeConfiguration) -> List[Task]:
        planner = MergePlanner(merge.model_copy(deep=True), self.arch, self.options, self.out_config)
        return planner.plan_to_disk(out_path="<in memory: never written>")

    @staticmethod
    def _plan_entries(tasks: List[Task]) -> List[PlanEntry]:
        return [(t.tensor_name, t.tensor_task, t.dtype) for t in tasks if isinstance(t, SaveTensor)]

    def _tokenizer(self, start: MergeConfiguration, planned: List[Task]):
        """mergekit's merged tokenizer when the recipe asks for one, else the donor's."""
        builders = [t for t in planned if isinstance(t, BuildTokenizer)]
        if builders:
            info = next(v for _, v in Executor(builders).run(quiet=True) if isinstance(v, TokenizerInfo))
            pad = start.tokenizer.pad_to_multiple_of if start.tokenizer else None
            _update_config_vocab(self.out_config, self.arch, info.tokenizer, pad_to_multiple_of=pad)
            return info.tokenizer
        _, donor_path = _get_donor_model(start, self.options)
        return AutoTokenizer.from_pretrained(donor_path, trust_remote_code=self.options.trust_remote_code)

    def _check_coverage(self, plan: List[PlanEntry]) -> None:
        planned = {name for name, _, _ in plan}
        missing = [name for name, p in self.model.named_parameters() if name not in planned]
        unknown = sorted(planned - set(self._parameters))
        if missing or unknown:
            raise ValueError(
                f"the merge plan and the output model disagree: not merged {missing[:5]}, not in the model {unknown[:5]}"
            )

    def _load_inputs(self, plan: List[PlanEntry]) -> Dict[Hashable, object]:
        """Run mergekit's loading tasks once; their results stay resident for the whole run. mergekit's
        loaders (one process-wide cache) are then closed, so a later load reads the files as they are."""
        gathers = list({task_key(task.gather_tensors): task.gather_tensors for _, task, _ in plan}.values())
        executor = Executor(gathers, math_device=self.device, storage_device=self.parent_device)
        loaded = {task_key(task): value for task, value in executor.run(quiet=self.quiet, desc="Loading parents")}
        LoaderCache().flush_all()
        return loaded

    def materialize(self, candidate: Candidate) -> MaterializeStats:
        """Write the candidate's weights into the resident model, recomputing only what changed."""
        start = time.perf_counter()
        plan = self._plan_entries(self._planned_tasks(candidate.merge))
        everything = draws_random(candidate.merge.merge_method)
        todo = {}
        for name, task, dtype in plan:
            self._check_inputs(name, task)
            signature = (_merge_key(task), dtype, self._noise_scale(candidate, name), candidate.seed)
            if everything or self._written.get(name) != signature:
                todo[task] = (name, dtype, signature)
        if todo:
            self._run(candidate, todo)
        return MaterializeStats(time.perf_counter() - start, len(todo), len(plan))

    def _check_inputs(self, name: str, task: ExecuteMergeMethodTask) -> None:
        """The parents' tensors are loaded once, for the starting recipe's structure; a candidate
        that reads other tensors (another layer range or model) would silently get the start's."""
        if name not in self._gathers or task_key(task.gather_tensors) != self._gathers[name][0]:
            raise ValueError(f"the candidate merges {name} from other tensors or models than the starting "
                             "recipe does; evomerge searches parameters, not which tensors are merged")

    def _run(self, candidate: Candidate, todo: Dict[Task, tuple]) -> None:
        universe = TaskUniverse()
        targets = [universe.add_task(task) for task in todo]
        cached = {universe.get_handle(task.gather_tensors): self._inputs[self._gathers[name][0]]
                  for task, (name, _, _) in todo.items()}
        executor = Executor(targets, math_device=self.device, storage_device=self.device, cached_values=cached)
        with preserved_random_state(), torch.no_grad():
            transformers.trainer_utils.set_seed(candidate.seed)  # as `mergekit-yaml --random-seed`
            for task, value in executor.run(quiet=True):
                name, dtype, signature = todo[task]
                self._written.pop(name, None)
                if value is None:
                    continue
                if dtype:
                    value = value.to(dtype=dtype_from_name(dtype))
                value = add_noise(value, name, signature[2], candidate.seed)
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise FloatingPointError(f"the merge gave non-finite weights in {name}")
                self._parameters[name].copy_(value)
                self._written[name] = signature

    def _noise_scale(self, candidate: Candidate, name: str) -> float:
        if not candidate.noise:
            return 0.0
        return relative_std(candidate.noise, self._positions.get(name, 0.0))

    def load_parent(self, reference: ModelReference) -> None:
        """Write one parent's own weights into the resident model (`models:` recipes only)."""
        if not all(s.in_place(reference) for s in self._sections) \
                or any(reference not in self._inputs[g] for g, _ in self._gathers.values()):
            raise ValueError(f"{reference} does not supply every tensor of the output model as it is")
        with torch.no_grad():
            for name, (gather, dtype) in self._gathers.items():
                tensor = self._inputs[gather][reference]
                self._parameters[name].copy_(tensor.to(dtype_from_name(dtype)) if dtype else tensor)
        self._written.clear()
