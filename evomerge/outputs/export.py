"""Exports a run's candidate as a Hugging Face model folder with a model card that
records how the merge was found.

What is exported is what was scored: the candidate is merged again as the search merged it
(the same code, on the device the search used unless told otherwise, in the dtype it was
scored in), its weights' fingerprint is compared with the one stored when it was scored, and a
difference — a parent changed since, another device's kernels or random stream — refuses the
export, naming the first tensor that differs. `mergekit-yaml mergekit_config.yml` (`mergekit-multi` for a
multi-stage recipe, or `evomerge merge` when there is noise) reproduces the weights on that device
(`tests/test_parity.py` holds the in-memory and on-disk merges equal).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml
from mergekit import merge_methods

from evomerge.errors import EvomergeError
from evomerge.merge.fingerprint import fingerprint, first_difference
from evomerge.merge.materializer import Materializer, default_device
from evomerge.merge.multi_stage import materializer_for
from evomerge.merge.write import RECIPE_FILE, save_resident
from evomerge.outputs.qd_map import chosen_elite, place
from evomerge.outputs.route_plot import describe_route, route_of, save_route
from evomerge.outputs.text import dtype_name, render_markdown
from evomerge.recipe.candidate import Candidate
from evomerge.recipe.device_defaults import scoring_dtype
from evomerge.recipe.loading import load_recipe
from evomerge.recipe.routing import INCLUDE
from evomerge.recipe.space_factory import build_space
from evomerge.run.store import Evaluation, RunStore
from evomerge.run_options import RunOptions

FITNESS_IMAGE = "fitness.png"
ROUTE_IMAGE = "route.png"


def chosen_evaluation(store: RunStore, rank: int) -> Evaluation:
    """The candidate of that rank in the run's standings: 1 is the winner (the confirmed one, when the
    recipe confirms its finalists)."""
    ranked = store.confirmations.standings()
    if not 1 <= rank <= len(ranked):
        raise EvomergeError(f"expected a rank from 1 to {len(ranked)} (successful evaluations in this run), got {rank}",
                            path=store.directory, key="--rank")
    return ranked[rank - 1]


def candidate_of(store: RunStore, evaluation: Evaluation) -> Candidate:
    """The evaluation's stored recipe, read back through the same path as `evomerge merge`."""
    recipe = load_recipe(store.directory / f"evaluation-{evaluation.id}.yaml", text=evaluation.recipe)
    return build_space(recipe).starting_point()


@dataclass(frozen=True)
class Verified:
    """How the exported weights were checked against the scored ones."""

    device: str
    matched: Optional[bool]  # None: the run stored no fingerprint for the candidate
    first_difference: Optional[str] = None
    dtype: Optional[str] = None  # what the weights were merged and scored in


def export_run(run_dir: Path, out: Path, rank: int = 1, options: RunOptions = RunOptions(),
               allow_mismatch: bool = False, cell: Optional[str] = None, measures: Optional[str] = None) -> Path:
    """The run's `rank`-th candidate (or, on a `qd` run's map, the elite of `cell` or the one nearest to
    `measures`: qd_map.py) merged again on `options.device` (default: where it was scored) with the run's
    own trust in model code, checked against the scored weights' fingerprint, saved with its card."""
    store = RunStore.open(run_dir)
    if cell is not None or measures is not None:
        chosen = chosen_elite(store.archive.read(), run_dir, cell, measures).evaluation
        rank = 1 + [e.id for e in store.confirmations.standings()].index(chosen)
    evaluation = chosen_evaluation(store, rank)
    candidate = candidate_of(store, evaluation)
    if out.exists() and any(out.iterdir()):
        raise EvomergeError("expected an empty or new folder for the exported model", path=out, key="--out")
    recipe = load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text"))
    stored = RunOptions(**{k: v for k, v in store.meta("options").items() if k in RunOptions.model_fields})
    scored_on = evaluation.device or stored.device or default_device()
    device = options.device or scored_on
    dtype = scoring_dtype(recipe.merge, recipe.spec.eval, torch.device(scored_on).type)  # as the search scored it
    here = options.model_copy(update={"device": device, "trust_remote_code": stored.trust_remote_code})
    materializer = materializer_for(candidate, options=here, dtype=dtype)
    materializer.materialize(candidate)
    verified = _verify(store, evaluation, materializer, device)
    if verified.matched is False and not allow_mismatch:
        raise EvomergeError(f"the weights merged on {device} differ from those evaluation #{evaluation.id} was scored "
                            f"with (on {evaluation.device}) from tensor {verified.first_difference} on; a parent may "
                            "have changed, or the device differs. Pass --allow-mismatch to export them anyway",
                            path=run_dir, key="--device")
    save_resident(materializer, candidate, out)
    image = _fitness_image(store)
    shutil.copy(image, out / FITNESS_IMAGE)
    routed = any(gene["parameter"] == INCLUDE for gene in store.meta("genes") or [])
    if routed:
        hops, ends = route_of(candidate.to_yaml())
        save_route(hops, ends, f"Route of evaluation #{evaluation.id}: {len(hops)} layers", out / ROUTE_IMAGE)
    (out / "README.md").write_text(model_card(store, evaluation, candidate, rank, verified, routed), encoding="utf-8")
    return out


def _verify(store: RunStore, evaluation: Evaluation, materializer: Materializer, device: str) -> Verified:
    scored, dtype = store.evaluations.fingerprint(evaluation.id), dtype_name(materializer.model)
    if not scored:
        return Verified(device, None, dtype=dtype)
    difference = first_difference(scored, fingerprint(materializer.model))
    return Verified(device, difference is None, difference, dtype)


def _fitness_image(store: RunStore) -> Path:
    from evomerge.outputs.report import write_report

    image = store.directory / FITNESS_IMAGE
    if not image.is_file():
        write_report(store.directory)
    return image


def _searcher_name(store: RunStore) -> str:
    """The searcher the run used: the recipe's, unless `--searcher` overrode it."""
    recipe = load_recipe(store.meta("recipe_path"), text=store.meta("recipe_text"))
    return store.meta("options").get("searcher") or recipe.spec.searcher.name


def _is_local(reference: str) -> bool:
    return Path(reference).exists() or reference.startswith(("/", ".", "~"))


def _model_name(reference: str) -> str:
    """Hub ids stay as they are; a local folder is named by its last component."""
    return Path(reference).name if _is_local(reference) else reference


def model_card(store: RunStore, evaluation: Evaluation, candidate: Candidate, rank: int,
               verified: Optional[Verified] = None, routed: bool = False) -> str:
    merge = candidate.merge
    parents = [str(m) for m in candidate.parents()]
    options: Dict[str, Any] = store.meta("options")
    report: Optional[Dict[str, Any]] = store.report("report")
    evaluations = store.evaluations.finished()
    method = merge_methods.get(merge.merge_method)
    hub_parents = [p for p in parents if not _is_local(p)]  # the Hub links base_model ids to their pages
    on_map = place(store.archive.read(), evaluation.id)
    metadata = {
        **({"base_model": hub_parents} if hub_parents else {}),
        "library_name": "transformers",
        "tags": ["merge", "mergekit", "evomerge"],
    }
    reproduce = (f"evomerge merge {RECIPE_FILE} ./model" if candidate.noise
                 else f"mergekit-multi {RECIPE_FILE} --out-path ./model -I ./stages --random-seed {candidate.seed}"
                 if candidate.before else f"mergekit-yaml {RECIPE_FILE} ./model --random-seed {candidate.seed}")
    lines: List[str] = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        f"# {Path(store.directory).name} (evomerge)",
        "",
        "This model is a merge of pre-trained language models created with "
        "[mergekit](https://github.com/arcee-ai/mergekit); its recipe was found by evolutionary search with evomerge.",
        "",
        "## Merge details",
        "",
        f"- Merge method: {method.spec.pretty_name or merge.merge_method} (`{merge.merge_method}`)"
        + (f", base model `{_model_name(str(merge.base_model))}`" if merge.base_model else ""),
        "- Models merged:",
        *[f"  - `{_model_name(p)}`" for p in parents],
        "",
        "## How it was found",
        "",
        f"- Searcher: `{_searcher_name(store)}`{' (from --searcher)' if options.get('searcher') else ''}, "
        f"seed {candidate.seed}",
        f"- Budget: {len(evaluations)} evaluations ({sum(e.failed for e in evaluations)} failed)",
        f"- This candidate: evaluation #{evaluation.id} (generation {evaluation.generation}, rank {rank}, "
        f"operator `{evaluation.operator or '-'}`"
        + (f", parents {', '.join(f'#{p}' for p in evaluation.parents)}" if evaluation.parents else "")
        + f"), search fitness {evaluation.fitness:.4f}",
        *([f"- On the map of the search: {on_map}"] if on_map else []),
        "",
        *([_verification(verified, evaluation)] if verified else []),
        "",
        f"![fitness over the search]({FITNESS_IMAGE})",
        "",
    ]
    if report:
        table = render_markdown(report).split("\n", 2)[2]
        lines += ["## Evaluation", "", table.rstrip(), ""]
    lines += [
        "## Configuration",
        "",
        f"Reproduce the weights with `{reproduce}`.",
        "",
        *(_route_lines(candidate) if routed else []),
        "```yaml",
        candidate.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _route_lines(candidate: Candidate) -> List[str]:
    hops, _ = route_of(candidate.to_yaml())
    return [f"![the route: which model, layer and scale each layer takes]({ROUTE_IMAGE})", "",
            f"The {len(hops)} layers a token passes through (model:layer×scale): {describe_route(hops)}.", ""]


def _verification(verified: Verified, evaluation: Evaluation) -> str:
    return f"- Scored in `{verified.dtype}` on `{evaluation.device}`\n" + _fingerprint_check(verified, evaluation)


def _fingerprint_check(verified: Verified, evaluation: Evaluation) -> str:
    if verified.matched is None:
        return f"- Weights merged on `{verified.device}`; the run stored no fingerprint of the scored weights to check"
    if verified.matched:
        return (f"- Weights merged on `{verified.device}`: their fingerprint matches the weights scored in the search "
                f"(on `{evaluation.device}`), tensor by tensor")
    return (f"- Weights merged on `{verified.device}` DIFFER from the weights scored in the search (on "
            f"`{evaluation.device}`) from tensor `{verified.first_difference}` on (exported with --allow-mismatch)")
