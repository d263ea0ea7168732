"""Multi-stage recipes merged in memory, stage after stage, as `mergekit-multi` merges them on disk.

Each stage is one Materializer. An earlier stage's output model stays resident and is a parent of
the stages that read it, read in place (never copied or written). So that mergekit can plan a later
stage as if mergekit-multi had written the earlier one, each earlier stage gets a stand-in folder
(its output config, its tokenizer and a weight index naming its tensors, but no weights); the
tensors themselves are never read from there. When a stage rewrites tensors, the later stages
recompute exactly the tensors merged from them, so a candidate that changes only the last stage's
genes re-merges only the last stage. The final stage may be materialized otherwise (a route over
earlier stages' outputs and the parents, merge/routed_model.py); an earlier stage that a candidate's
final merge does not read is left as it is until a candidate reads it again.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration

from evomerge.merge.footprint import Footprint, footprint
from evomerge.merge.materializer import Materializer, MaterializeStats
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.layout import Stage
from evomerge.recipe.references import map_model_references, stage_name
from evomerge.run_options import RunOptions

INDEX = "model.safetensors.index.json"  # mergekit's loader finds a model's tensor names here


@dataclass(frozen=True)
class StagedStats(MaterializeStats):
    stages: Dict[Optional[str], MaterializeStats] = field(default_factory=dict)  # by stage name (None: the final)


def located(merge: MergeConfiguration, folders: Mapping[str, str]) -> MergeConfiguration:
    """The stage's recipe with each earlier stage's name replaced by its folder, as mergekit-multi does."""
    if not folders:
        return merge

    def locate(reference: str) -> str:
        name = stage_name(reference)
        return folders[name] + reference[len(name):] if name in folders else reference

    return MergeConfiguration.model_validate(
        map_model_references(merge.model_dump(mode="json", exclude_defaults=True), locate))


def _stand_in(folder: Path, config, tokenizer, names: Sequence[str]) -> None:
    """An earlier stage's output as mergekit reads a model folder before loading tensors."""
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    weight_map = {name: "model.safetensors" for name in names}
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")


class StagedMaterializer:
    """One Materializer per stage; the final one's resident model is the candidate's. `final` builds the
    final stage's materializer (as Materializer's signature; by default a Materializer)."""

    def __init__(self, stages: Sequence[Stage], *, final: Callable[..., object] = Materializer,
                 options: RunOptions = RunOptions(), parents: Literal["device", "host"] = "device",
                 dtype: Optional[str] = None):
        self._scratch = tempfile.TemporaryDirectory(prefix="evomerge-stages-")  # removed with this object
        self._folders: Dict[str, str] = {}
        self._stages: List[Tuple[Stage, Materializer]] = []
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            earlier = {done.name: materializer for done, materializer in self._stages}
            produced = {ModelReference.model_validate(self._folders[name]): earlier[name].merged
                        for name in stage.reads}
            materializer = (final if last else Materializer)(
                located(stage.merge, self._folders), options=options, parents=parents, dtype=dtype if last else None,
                produced=produced)
            if not last:
                folder = Path(self._scratch.name) / f"stage-{index}"
                _stand_in(folder, materializer.model.config, materializer.tokenizer, list(materializer.merged))
                self._folders[stage.name] = str(folder)
            self._stages.append((stage, materializer))
        last = self._stages[-1][1]
        self.model, self.tokenizer, self.device = last.model, last.tokenizer, last.device

    def materialize(self, candidate: Candidate) -> StagedStats:
        """Each stage in merge order, recomputing what changed in it or in what it reads."""
        start = time.perf_counter()
        done: Dict[Optional[str], MaterializeStats] = {}
        planned = {stage.name: stage for stage in candidate.before}
        for index, (stage, materializer) in enumerate(self._stages):
            final = index == len(self._stages) - 1
            concrete = candidate.stages[-1] if final else planned.get(stage.name)
            if concrete is None:  # a stage this candidate's final merge does not read
                continue
            for name in stage.reads:
                if name in done and done[name].written:
                    reference = ModelReference.model_validate(self._folders[name])
                    materializer.forget(materializer.readers(reference, done[name].written))
            one = Candidate(merge=located(concrete.merge, self._folders), seed=candidate.seed,
                            noise=candidate.noise if final else None)
            done[stage.name] = last = materializer.materialize(one)
        return StagedStats(time.perf_counter() - start, sum(s.recomputed for s in done.values()),
                           sum(s.total for s in done.values()), last.written, done)

    def load_parent(self, reference: ModelReference) -> None:
        """A parent of the final merge written into the resident model (see Materializer.load_parent)."""
        self._stages[-1][1].load_parent(reference)


def materializer_for(start: Candidate, **settings) -> Union[Materializer, StagedMaterializer]:
    """The materializer for the candidate's recipe: one stage, or several merged stage after stage."""
    return StagedMaterializer(start.stages, **settings) if start.before else Materializer(start.merge, **settings)


def stages_footprint(stages: Sequence[Stage], scoring_dtype: Optional[str],
                     trust_remote_code: bool = False) -> Footprint:
    """The bytes the stages hold together: every stage's parents, every stage's output (earlier ones in
    their recipe's dtype, the final one in the scoring dtype), and the largest stage's work space."""
    if len(stages) == 1:
        return footprint(stages[0].merge, scoring_dtype, trust_remote_code=trust_remote_code)
    parts: List[Footprint] = []
    with tempfile.TemporaryDirectory(prefix="evomerge-stages-") as scratch:
        folders: Dict[str, str] = {}
        for index, stage in enumerate(stages):
            final = index == len(stages) - 1
            parts.append(footprint(located(stage.merge, folders), scoring_dtype if final else None,
                                   trust_remote_code=trust_remote_code))
            if not final:
                folder = Path(scratch) / f"stage-{index}"
                parts[-1].config.save_pretrained(folder)
                folders[stage.name] = str(folder)
        stand_ins = set(folders.values())
    return dataclasses.replace(
        parts[-1],
        parents={name: size for part in parts for name, size in part.parents.items() if name not in stand_ins},
        resident_parents=sum(part.resident_parents for part in parts),
        output=sum(part.output for part in parts),
        workspace=max(part.workspace for part in parts),
        largest=max((part.largest for part in parts), key=lambda largest: largest[1]),
    )
