"""Where a routed candidate's weights are computed: layers copied from the resident parents into one
resident output model whose depth follows the candidate's.

Every layer of every routed model stays resident once (a "gallery" passthrough recipe of them all,
loaded by the parent cache as mergekit loads it). The output model is built once with `max_layers`
layers; a candidate with fewer uses the first ones (the model's layer list and its config's layer
count are cut to the candidate's; the rest stay allocated for the next deeper candidate), so memory is
bounded by the deepest candidate allowed and nothing is rebuilt when the depth changes. Each candidate
is planned by mergekit's own planner (which input tensor, which scale, for every output tensor, as
`mergekit-yaml` would merge it), and a tensor is copied only when what its place holds changed:
passthrough is a copy times the scale, computed as mergekit computes it, so the weights are
`mergekit-yaml`'s (tests/test_routing.py). The config's per-layer lists (`layer_types`, ...) follow
each candidate's layers; the layer modules are built once for their entries, so every routed layer
must have the same ones (recipe/routing.py refuses other routes before anything loads).

PS+DFS: a route over earlier stages' outputs is the final stage of a StagedMaterializer; those
outputs are read in place like any resident parent, and a layer copied from one is copied again
when its stage rewrites it (tests/test_psdfs.py).
"""

from __future__ import annotations

import functools
import time
from typing import Dict, Hashable, Iterable, List, Literal, Mapping, Optional, Tuple, Union

import torch
from mergekit.common import ModelReference, dtype_from_name, set_config_value
from mergekit.config import MergeConfiguration
from mergekit.io.tasks import LoaderCache
from mergekit.options import MergeOptions

from evomerge.merge.materializer import Materializer, MaterializeStats, default_device
from evomerge.merge.mergekit_tasks import Planner, check_coverage, plan_entries
from evomerge.merge.multi_stage import StagedMaterializer, materializer_for
from evomerge.merge.output_model import output_config, output_tokenizer, resident_model
from evomerge.merge.parent_cache import ParentCache
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.route import Hop, per_layer_lists, to_merge
from evomerge.recipe.routing import RoutingSpace
from evomerge.recipe.space import SearchSpace
from evomerge.run_options import RunOptions


def search_materializer(space: SearchSpace, **settings) -> Union[Materializer, StagedMaterializer, "RoutingMaterializer"]:
    """What a search over `space` keeps resident: the routing materializer for a routing space, else the
    one for the starting point's recipe (one stage, or several merged stage after stage)."""
    if isinstance(space, RoutingSpace) and space.earlier is not None:  # PS+DFS: a route over earlier stages
        return StagedMaterializer(space.with_final(space.gallery()),
                                  final=functools.partial(RoutingMaterializer, max_layers=space.max_layers), **settings)
    if isinstance(space, RoutingSpace):
        return RoutingMaterializer(space.gallery(), space.max_layers, **settings)
    return materializer_for(space.starting_point(), **settings)


class RoutingMaterializer:
    """Materializes any passthrough recipe over the gallery's layers, up to `max_layers` deep. `produced`:
    gallery models that are earlier stages' resident outputs (see merge/multi_stage.py), read in place."""

    def __init__(self, gallery: MergeConfiguration, max_layers: int, *, options: RunOptions = RunOptions(),
                 parents: Literal["device", "host"] = "device", dtype: Optional[str] = None,
                 produced: Mapping[ModelReference, Mapping[str, torch.Tensor]] = {}):
        self.device = torch.device(options.device or default_device())
        self.max_layers = max_layers
        self._options = MergeOptions(device=str(self.device), trust_remote_code=options.trust_remote_code, quiet=True)
        LoaderCache().setup(self._options)
        self._arch, config = output_config(gallery, self._options)
        self._module = next(iter(self._arch.modules.values())).architecture
        planned = Planner(self._arch, self._options, config).tasks(gallery)
        self.tokenizer = output_tokenizer(gallery, planned, config, self._arch, self._options)
        plan = plan_entries(planned)
        storage = self.device if parents == "device" else torch.device("cpu")
        self._parents = ParentCache(plan, self.device, storage, quiet=options.quiet, produced=produced)
        self._source = {(model, weight.name): name for name, task, _ in plan
                        for model, weight in task.gather_tensors.weight_info.items()}
        self._loads = {(model, weight.name): weight.force_dtype or task.gather_tensors.dtype for _, task, _ in plan
                       for model, weight in task.gather_tensors.weight_info.items()}  # as mergekit's LoadTensor casts
        self._ends, self._dtypes = str(gallery.base_model), {"dtype": gallery.dtype, "out_dtype": gallery.out_dtype}
        self._key = self._module.num_layers_config_key()
        routed = per_layer_lists(config, self._key)  # the gallery's: every routed layer's entries
        set_config_value(config, self._key, max_layers)
        for name, values in routed.items():
            if any(value != values[0] for value in values):
                raise ValueError(f"`{name}` differs between the routed layers; the resident layers are built for one")
            set_config_value(config, name, values[:1] * max_layers)
        self.model = resident_model(config, self.device, dtype or gallery.out_dtype or gallery.dtype,
                                    trust_remote_code=options.trust_remote_code)
        self._parameters = dict(self.model.state_dict(keep_vars=True))  # every layer's, however deep the candidate
        self._holder, self._attribute = _layer_list(self.model, self._module.layer_weights(0, config)[0].name)
        self._layers = list(getattr(self._holder, self._attribute))
        self._depth = max_layers
        self._written: Dict[str, Hashable] = {}

    def _resize(self, depth: int) -> None:
        if depth == self._depth:
            return
        if not 1 <= depth <= self.max_layers:
            raise ValueError(f"the candidate has {depth} layers; the resident model holds 1 to {self.max_layers}")
        setattr(self._holder, self._attribute, torch.nn.ModuleList(self._layers[:depth]))
        set_config_value(self.model.config, self._key, depth)
        self._depth = depth

    def materialize(self, candidate: Candidate) -> MaterializeStats:
        """Write the candidate's layers into the resident model, copying only the tensors whose source changed."""
        start = time.perf_counter()
        merge = candidate.merge
        if merge.merge_method != "passthrough":
            raise ValueError(f"a routed candidate is a passthrough recipe, got {merge.merge_method!r}")
        _, config = output_config(merge, self._options)
        self._resize(self._module.num_layers(config))
        for name, values in per_layer_lists(config, self._key).items():
            set_config_value(self.model.config, name, values)  # the same entries the layers were built for
        plan = Planner(self._arch, self._options, config).entries(merge)
        check_coverage(plan, self.model)
        todo: List[Tuple[str, ModelReference, str, Optional[float], Optional[str]]] = []
        for name, task, dtype in plan:
            (model, weight), = task.gather_tensors.weight_info.items()
            if (model, weight.name) not in self._source:
                raise ValueError(f"{name} comes from {weight.name} of {model}, which the resident parents do not hold")
            scale = task.input_parameters[model]["scale"]
            if self._written.get(name) != (model, weight.name, scale, dtype):
                todo.append((name, model, weight.name, scale, dtype))
        for name, *_ in todo:
            self._written.pop(name, None)  # a failure halfway leaves them unknown
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        with torch.no_grad():
            for name, model, source, scale, dtype in todo:
                value = self._parents.inputs(self._source[(model, source)])[model].to(self.device)
                if self._loads[(model, source)]:
                    value = value.to(dtype=dtype_from_name(self._loads[(model, source)]))
                if scale is not None:  # mergekit's passthrough: the input times the scale
                    value = value * scale
                    finite &= torch.isfinite(value).all()
                if dtype:
                    value = value.to(dtype=dtype_from_name(dtype))
                self._parameters[name].copy_(value)
        if not finite.item():  # the candidate's one wait for the device
            raise FloatingPointError("the scaled layers overflow: non-finite weights")
        self._written.update({name: (model, source, scale, dtype) for name, model, source, scale, dtype in todo})
        return MaterializeStats(time.perf_counter() - start, len(todo), len(plan), tuple(name for name, *_ in todo))

    def readers(self, reference: ModelReference, names: Iterable[str]) -> List[str]:
        """The output tensors now copied from any of `names` of an earlier stage's output `reference`."""
        read = set(self._parents.readers(reference, set(names)))
        return [name for name, (model, source, *_) in self._written.items() if self._source[(model, source)] in read]

    def forget(self, names: Iterable[str]) -> None:
        """Copy these tensors again for the next candidate (an earlier stage rewrote what they hold)."""
        for name in names:
            self._written.pop(name, None)

    def load_parent(self, reference: ModelReference) -> None:
        """Write one parent into the resident model: the model the embeddings come from, if it fits."""
        layers = self._module.num_layers(reference.config(trust_remote_code=self._options.trust_remote_code))
        if str(reference) != self._ends or layers > self.max_layers:
            raise ValueError(f"{reference} is not the model whose embeddings the routes use, or is too deep")
        self.materialize(Candidate(to_merge([Hop(self._ends, i) for i in range(layers)], self._ends, **self._dtypes), seed=0))


def _layer_list(model: torch.nn.Module, first_layer_weight: str) -> Tuple[torch.nn.Module, str]:
    """The module holding the layer list, and its attribute name, from the first layer's weight name."""
    parts = first_layer_weight.split(".")
    for k, part in enumerate(parts):
        if part == "0":
            holder = model.get_submodule(".".join(parts[: k - 1]))
            if isinstance(getattr(holder, parts[k - 1], None), torch.nn.ModuleList):
                return holder, parts[k - 1]
    raise ValueError(f"no layer list found for {first_layer_weight}")
