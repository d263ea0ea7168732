"""Multi-stage recipes in `mergekit-multi`'s format, read into stages and checked once.

Each YAML document is one merge; a `name:` names it, and a later document merges it by naming it
where a model goes (`model: stage1`), as mergekit-multi does. The one `evomerge:` section may sit in
any document (mergekit ignores it). The stages come out in merge order, the final merge last: the
one no other stage reads, whose output is scored. A one-document recipe is one stage, read exactly
as before, so the rest of evomerge walks stages whatever the recipe's shape.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mergekit.common import ModelReference

from evomerge.errors import SECTION, EvomergeError, did_you_mean
from evomerge.recipe import layout
from evomerge.recipe.layout import Stage
from evomerge.recipe.parents import check_parents
from evomerge.recipe.parsing import parse_merge_config
from evomerge.recipe.route import RoutingEntry
from evomerge.recipe.schema import EvomergeSpec

NAME = re.compile(r"[A-Za-z0-9_.-]+")  # mergekit-multi writes a stage into a folder of its name


@contextlib.contextmanager
def _in_document(index: Optional[int]) -> Iterator[None]:
    """Errors raised for one document name it: `documents[1].models[0].model`."""
    try:
        yield
    except EvomergeError as error:
        if index is None:
            raise
        raise EvomergeError(error.message, path=error.path, key=layout.document_key(index, error.key or "")) from None


def read_stages(documents: Sequence[Any], path: Path) -> Tuple[Any, Tuple[Stage, ...]]:
    """The `evomerge:` section (or None) and the stages in merge order, the final merge last."""
    multi = len(documents) > 1
    names: List[Optional[str]] = []
    bodies: List[Dict[str, Any]] = []
    section, section_at = None, None
    for index, document in enumerate(documents):
        where = functools.partial(layout.document_key, index if multi else None)
        if not isinstance(document, dict):
            raise EvomergeError("expected a mapping of mergekit keys", path=path, key=where("") or None)
        body = dict(document)
        if SECTION in body:
            if section_at is not None:
                raise EvomergeError(f"a second `{SECTION}:` section (the first is in documents[{section_at}]); "
                                    "expected one, in any document", path=path, key=where(SECTION))
            section, section_at = body.pop(SECTION), index
        name = body.pop("name", None)
        if name is not None and not (isinstance(name, str) and NAME.fullmatch(name)):
            raise EvomergeError(f"expected a stage name of letters, digits, '_', '.' and '-', got {name!r}",
                                path=path, key=where("name"))
        if name in names:
            message = (f"duplicate stage name {name!r} (also documents[{names.index(name)}])" if name is not None else
                       "a second unnamed document; mergekit-multi merges one unnamed document, the final one: "
                       "name the others")
            raise EvomergeError(message, path=path, key=where("name" if name is not None else "") or None)
        names.append(name)
        bodies.append(body)
    known = [n for n in names if n is not None]
    stages = []
    for index, (name, body) in enumerate(zip(names, bodies)):
        with _in_document(index if multi else None):
            merge = parse_merge_config(body, path, known)
        stage = Stage(name, merge, index if multi else None)
        stages.append(Stage(name, merge, stage.document, tuple(_reads(stage, known, path))))
    return section, _merge_order(stages, path)


def _reads(stage: Stage, known: Sequence[str], path: Path) -> Iterator[str]:
    """The stages `stage` merges; a bare name that is neither a stage nor a folder is a misspelt stage."""
    places = layout.references(stage.merge)
    if isinstance(stage.merge.tokenizer_source, ModelReference):
        places.append(("tokenizer_source", stage.merge.tokenizer_source))
    for key, reference in places:
        target = reference.model.path
        if target in known:
            yield target
        elif known and "/" not in target and not Path(target).exists():
            raise EvomergeError(f"unknown stage {target!r}{did_you_mean(target, known)}; expected the name of a "
                                f"document ({', '.join(known)}) or a model folder", path=path, key=stage.key(key))


def _merge_order(stages: List[Stage], path: Path) -> Tuple[Stage, ...]:
    """Every stage after the ones it reads, in document order otherwise; one final merge, no cycles."""
    by_name = {s.name: s for s in stages if s.name is not None}
    read = {name for s in stages for name in s.reads}
    finals = [s for s in stages if s.name not in read]
    if len(finals) > 1:
        extra = next(s for s in finals if s.name is not None)
        others = ", ".join(repr(s.name) if s.name else "the unnamed document" for s in finals if s is not extra)
        raise EvomergeError(f"stage {extra.name!r} is merged by no other stage, nor is {others}; expected one final "
                            "merge that the others feed", path=path, key=extra.key("name"))
    order: List[Stage] = []
    trail: List[Stage] = []

    def visit(stage: Stage) -> None:
        if any(s is stage for s in order):
            return
        if any(s is stage for s in trail):
            cycle = trail[[id(s) for s in trail].index(id(stage)):] + [stage]
            raise EvomergeError(f"stages {' -> '.join(s.name for s in cycle)} merge each other in a cycle",
                                path=path, key=trail[-1].key("name"))
        trail.append(stage)
        for name in stage.reads:
            visit(by_name[name])
        trail.pop()
        order.append(stage)

    for stage in stages:
        visit(stage)
    if not finals:  # every stage is read by another: a cycle through all of them
        visit(stages[0])
    return tuple(order)


def stage_named(stages: Sequence[Stage], name: Optional[str]) -> Stage:
    """The stage of that name; None is the final merge."""
    return stages[-1] if name is None else next(s for s in stages if s.name == name)


def check_gene_stages(spec: EvomergeSpec, stages: Sequence[Stage], path: Path) -> None:
    """Each `search:` entry's stage is one of the recipe's; a genome decodes to one merge only. A routing
    block routes the final merge (PS+DFS: over earlier stages' outputs and the parents), so beside it
    every gene names an earlier stage."""
    known = [s.name for s in stages if s.name is not None]
    routing = [index for index, entry in enumerate(spec.search) if isinstance(entry, RoutingEntry)]
    if len(routing) > 1:
        raise EvomergeError(f"a second routing block (the first is search[{routing[0]}]); expected one, which "
                            "routes the final merge", path=path, key=f"{SECTION}.search[{routing[1]}]")
    earlier = [s.name for s in stages[:-1]]
    for index, gene in enumerate(spec.search):
        if isinstance(gene, RoutingEntry):
            continue
        if gene.stage is not None and gene.stage not in known:
            expected = f"expected one of {', '.join(known)}" if known else "the recipe has one unnamed stage"
            raise EvomergeError(f"unknown stage {gene.stage!r}{did_you_mean(gene.stage, known)}; {expected}",
                                path=path, key=f"{SECTION}.search[{index}].stage")
        if routing and len(stages) > 1 and gene.stage not in earlier:
            raise EvomergeError(f"the final merge is the routing block's route; a gene beside it writes an earlier "
                                f"stage, expected `stage:` one of {', '.join(earlier)}", path=path,
                                key=f"{SECTION}.search[{index}].stage")
    if spec.genome is not None and len(stages) > 1:
        raise EvomergeError("a mergekit-evolve genome decodes to one merge; search a multi-stage recipe with "
                            "`search:`", path=path, key=f"{SECTION}.genome")


def check_stage_parents(stages: Sequence[Stage], path: Path, *, allow_pickle: bool = False) -> None:
    """Every stage's parents; an earlier stage's output is no parent here (it is checked as its stage)."""
    names = [s.name for s in stages if s.name is not None]
    for stage in stages:
        with _in_document(stage.document):
            check_parents(stage.merge, path, allow_pickle=allow_pickle, produced=names)
