"""The commands beside the search: the zoo, merging a recipe, converting a mergekit-evolve config, a
recipe's JSON Schema, a search's plan, and what a finished run gives (export, report, study), and the
family tree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from evomerge.cli.options import friendly_errors, run_options
from evomerge.errors import EvomergeError, mergekit_refusals
from evomerge.run_options import RunOptions


@click.group()
def zoo() -> None:
    """The built-in zoo of tiny models for the demo, tests and benchmarks."""


@zoo.command("build")
@click.option("--family", type=click.Choice(["llama", "tied"]), default="llama", show_default=True,
              help="llama: untied embeddings; tied: tied embeddings and grouped-query attention.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the zoo's models and manifest.json (default: zoo, zoo-tied in EVOMERGE_HOME: "
                   "recipes/ in a checkout, else the user's cache directory).")
@click.option("--force", is_flag=True, help="Rebuild even if a matching zoo exists.")
@friendly_errors
def zoo_build(family: str, out: Path, force: bool) -> None:
    """Train (or reuse) the base model and its specialists."""
    from evomerge.zoo.build import FAMILIES, build_zoo, zoo_dir

    out = out or zoo_dir(family)
    manifest = build_zoo(out, FAMILIES[family], force=force)
    skills = manifest["skills"]
    click.echo(f"zoo in {out} (built in {manifest['build_seconds']} s)")
    click.echo("model   " + "".join(f"{s:>8}" for s in skills))
    for entry in manifest["models"]:
        click.echo(f"{entry['name']:<8}" + "".join(f"{entry['report_accuracy'][s]:>8.3f}" for s in skills))


@click.command("merge", cls=PrettyPrintHelp)
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--in-memory", is_flag=True,
              help="Build through the materializer (resident parents, in-place merge) and save the resident model.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (.bin/.pt), which can run code.")
@add_merge_options
@friendly_errors
def merge(recipe: Path, out: Path, in_memory: bool, allow_pickle: bool, merge_options: MergeOptions) -> None:
    """A drop-in for mergekit-yaml that also applies evomerge's noise.

    A recipe with a search section merges at its starting point (the recipe's own
    values). The recipe's evomerge seed is mergekit's --random-seed unless given.
    """
    from evomerge.merge.write import write_in_memory, write_with_mergekit
    from evomerge.recipe.loading import load_recipe
    from evomerge.recipe.space_factory import build_space
    from evomerge.recipe.stages import check_stage_parents

    loaded = load_recipe(recipe)
    check_stage_parents(loaded.stages, loaded.path, allow_pickle=allow_pickle)
    candidate = build_space(loaded).starting_point()
    if merge_options.random_seed is not None:
        candidate = dataclasses.replace(candidate, seed=merge_options.random_seed)
    with mergekit_refusals(loaded.path):
        if in_memory:
            write_in_memory(candidate, out, RunOptions(device=merge_options.device, quiet=merge_options.quiet,
                                                       trust_remote_code=merge_options.trust_remote_code))
        else:
            write_with_mergekit(candidate, out, merge_options)
    click.echo(f"merged {recipe} into {out}")


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="The recipe file (default: print it).")
@friendly_errors
def convert(config: Path, out: Path) -> None:
    """Write the evomerge recipe for a mergekit-evolve CONFIG: mergekit keys at the genome's
    starting point (for mergekit-yaml), the genome, tasks and defaults in its evomerge section."""
    from evomerge.recipe.evolve_config import recipe_text
    from evomerge.recipe.parsing import parse_yaml, read_text

    raw = parse_yaml(read_text(config), config)
    if not isinstance(raw, dict) or "genome" not in raw:
        raise EvomergeError("expected a mergekit-evolve config, with a `genome:` key", path=config)
    _write_or_print(recipe_text(raw, config, out_dir=out.resolve().parent if out else None), out)


def _write_or_print(text: str, out: Optional[Path]) -> None:
    """`text` into the file `out` names, or on standard output without one."""
    if out:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), help="The schema file (default: print it).")
@friendly_errors
def schema(out: Path) -> None:
    """Write the JSON Schema of a recipe, for an editor to complete and check recipes with: mergekit's
    keys, a stage's name and the evomerge section, the searchers' options by searcher name."""
    from evomerge.recipe.json_schema import recipe_json_schema

    _write_or_print(json.dumps(recipe_json_schema(), indent=2) + "\n", out)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--device-memory", help="The device's memory, e.g. 80GiB (default: this machine's device's).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers sharing the device.")
@run_options("device", "trust_remote_code")
@friendly_errors
def plan(recipe, device_memory, workers, options: RunOptions):
    """What RECIPE's search needs (memory in each parents: mode, genes, documents, the merged architecture),
    from configs and safetensors headers: no weight is loaded."""
    from evomerge.recipe.loading import load_recipe
    from evomerge.recipe.stages import check_stage_parents
    from evomerge.run.loop import confirmation_suite
    from evomerge.run.memory_plan import documents_per_evaluation, make_plan, parse_bytes
    from evomerge.run.resolution import resolution_line

    loaded = load_recipe(recipe)
    check_stage_parents(loaded.stages, loaded.path, allow_pickle=True)
    memory = parse_bytes(device_memory) if device_memory else None
    with mergekit_refusals(loaded.path):
        found = make_plan(loaded, device=options.device, memory=memory, workers=workers,
                          trust_remote_code=options.trust_remote_code)
    for line in found.lines(documents_per_evaluation(loaded)):
        click.echo(line)
    said = resolution_line(loaded, confirmation_suite(loaded))
    if said:
        click.echo(said[0].upper() + said[1:])
    problem = found.refusal()
    if problem:
        raise EvomergeError(problem, path=loaded.path, key="evomerge.parents")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the Hugging Face model.")
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which candidate: 1 is the best of the run.")
@click.option("--cell", help="A `qd` run: the elite of this cell of the map (I,J: its index per measure).")
@click.option("--measures", help="A `qd` run: the elite nearest to these per-task scores (a,b: one per measure).")
@click.option("--allow-mismatch", is_flag=True,
              help="Export even if the weights differ from the scored ones (the card says so).")
@click.option("--push-to-hub", "repo_id", help="Also upload the folder to this Hub repository (owner/name).")
@click.option("--private", is_flag=True, help="Create the Hub repository as private.")
@run_options("device", "quiet", help={"device": "Merge on this device (default: the one that scored the candidate)."})
@friendly_errors
def export(run_dir, out, rank, cell, measures, allow_mismatch, repo_id, private, options: RunOptions):
    """Write a run's candidate as a Hugging Face model folder with a model card: merged again as the
    search merged it and checked against the fingerprint of the weights it was scored with."""
    from evomerge.outputs.export import export_run

    if cell is not None and measures is not None:
        raise EvomergeError("choose an elite by --cell or by --measures, not both", key="--cell")
    folder = export_run(run_dir, out, rank=rank, options=options, allow_mismatch=allow_mismatch, cell=cell,
                        measures=measures)
    click.echo(f"exported to {folder}")
    if repo_id:
        from evomerge.outputs.hub import push_folder

        click.echo(f"pushed to {push_folder(folder, repo_id, private=private or None)}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@friendly_errors
def report(run_dir):
    """Plots of a run (fitness, winner's parameters, per-task scores, lineage) and an HTML page."""
    from evomerge.outputs.report import write_report

    for path in write_report(run_dir):
        click.echo(str(path))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@friendly_errors
def study(run_dir):
    """Rebuild RUN_DIR's Optuna study (study.db) from its run store and say how to open it."""
    from evomerge.run.observers.study import Study, storage_url, study_name
    from evomerge.run.run_lock import RunLock
    from evomerge.run.store import RunStore

    store = RunStore.open(run_dir)
    try:
        with RunLock.hold(run_dir):  # a live search writes the study too
            if store.meta_or("genes", None) is None:
                raise EvomergeError("the run has no genes stored (it never started searching)", path=run_dir)
            observer = Study(store)
            trials = len(observer.rebuild().trials)
            observer.close()
            url, name = storage_url(store), study_name(store)
    finally:
        store.close()
    click.echo(f"{trials} trials in study {name!r}: optuna.load_study(study_name={name!r}, storage={url!r})")
    click.echo(f"optuna-dashboard {url}")


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the tree, tables and pictures.")
@click.option("--reference", help="Root the tree at this model (added as a leaf if not among MODELS).")
@click.option("--tasks", multiple=True, help="lm-eval tasks to score each model with (comma-separated or repeated).")
@click.option("--task-path", "task_paths", multiple=True, type=click.Path(path_type=Path),
              help="A folder of lm-eval task YAML files (repeatable).")
@click.option("--suggest-groups", type=click.IntRange(min=1),
              help="Print the K contiguous layer groups that best separate where the models differ.")
@run_options("device")
@friendly_errors
def tree(models, out, reference, tasks, task_paths, suggest_groups, options: RunOptions):
    """A neighbor-joining family tree of MODELS (folders or Hub ids) from distances between their weights."""
    from evomerge.tree.family import write_family_tree
    from evomerge.tree.joining import suggest_layer_groups

    names = [name for entry in tasks for name in entry.split(",") if name]
    distances, files = write_family_tree(models, out, reference=reference, tasks=names, task_paths=task_paths,
                                         device=options.device)
    for path in files:
        click.echo(str(path))
    if suggest_groups:
        profile = distances.layer_profile()
        ranges = suggest_layer_groups(profile, suggest_groups)
        click.echo(f"# {suggest_groups} layer groups; mean distance between the models per group:")
        for start, end in ranges:
            click.echo(f"#   layers {start}-{end - 1}: {profile[start:end].mean():.3g}")
        click.echo(f"layer_groups: {[list(r) for r in ranges]}")
