"""The `evomerge` command line."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from evomerge.errors import EvomergeError, mergekit_refusals
from evomerge.paths import DEFAULT_ZOO_DIR


def _friendly_errors(command):
    """Bad input ends in one line and exit code 2; `--debug` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except EvomergeError as error:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo("error: " + " ".join(str(error).splitlines()), err=True)  # one line, whatever the message
            sys.exit(2)

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="evomerge")
def main(debug: bool) -> None:
    """Evolve mergekit merge recipes, scored with lm-evaluation-harness."""


@main.group()
def zoo() -> None:
    """The built-in zoo of tiny models for the demo, tests and benchmarks."""


@zoo.command("build")
@click.option("--family", type=click.Choice(["llama", "tied"]), default="llama", show_default=True,
              help="llama: untied embeddings; tied: tied embeddings and grouped-query attention.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for the zoo's models and manifest.json (default: recipes/zoo, recipes/zoo-tied).")
@click.option("--force", is_flag=True, help="Rebuild even if a matching zoo exists.")
@_friendly_errors
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


@main.command("merge", cls=PrettyPrintHelp)
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--in-memory", is_flag=True,
              help="Build through the materializer (resident parents, in-place merge) and save the resident model.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (.bin/.pt), which can run code.")
@add_merge_options
@_friendly_errors
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
            write_in_memory(candidate, out, device=merge_options.device,
                            trust_remote_code=merge_options.trust_remote_code)
        else:
            write_with_mergekit(candidate, out, merge_options)
    click.echo(f"merged {recipe} into {out}")


def _default_run_dir(recipe: Path) -> Path:
    return Path("runs") / f"{recipe.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _finish(search, out: Path) -> None:
    from evomerge.outputs.scoreboard import finish_run, render_markdown
    from evomerge.run.loop import SearchInterrupted
    from evomerge.run.observers.study import storage_url

    try:
        search.run()
    except SearchInterrupted:
        click.echo(f"stopped; everything evaluated is stored. Continue with: evomerge resume {out}", err=True)
        sys.exit(130)
    report = finish_run(search)
    click.echo(render_markdown(report))
    click.echo(f"run directory: {out} (best recipe: {out / 'best.yaml'})")
    click.echo(f"the run as an Optuna study: optuna-dashboard {storage_url(search.store)}")


_device = click.option("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda when available).")
_workers = click.option("--workers", "--num-gpus", "workers", type=click.IntRange(min=0),
                        help="Evaluate on N Ray workers, each with a GPU (or its --gpus-per-worker share, or a "
                             "share of the CPUs); 0: in this process.")
_gpus_per_worker = click.option("--gpus-per-worker", type=click.FloatRange(min=0, min_open=True),
                                help="Each Ray worker's share of a GPU (0.5: two workers a GPU; default 1 where the "
                                     "cluster has GPUs).")
_ray_address = click.option("--ray-address", help="Join this Ray cluster (default: start a local one for the run).")
_allow_changed = click.option("--allow-changed", is_flag=True,
                              help="Resume although a parent, task, fitness module or library changed (recorded).")


_EVOLVE_IGNORED = {
    "storage_path": "evomerge merges every candidate in memory and keeps the run in --out",
    "strategy": "evomerge hands a candidate to whichever worker is free; there are no generations to schedule",
    "in_memory": "evomerge always merges in memory",
    "merge_cuda": "evomerge merges on --device",
    "reshard": "evomerge loads the parents once and keeps them resident",
    "save_final_model": "`evomerge export RUN --out DIR` writes the winner",
    "allow_benchmark_tasks": "evomerge does not refuse benchmark tasks; keep search and report tasks apart",
    "wandb_project": "set evomerge.track.wandb.project in the recipe",
    "wandb_entity": "set evomerge.track.wandb.entity in the recipe",
}
_EVOLVE_REFUSED = {
    "vllm": "evomerge scores the resident merged model with lm-eval's HF model; vLLM is not supported",
    "wandb": "evomerge logs to Weights & Biases when the recipe says so: evomerge.track.wandb: {project: ...}",
    "allow_crimes": "evomerge merges models of one architecture",
    "load_in_8bit": "evomerge scores in the recipe's dtype (evomerge.eval.dtype); quantized scoring is not supported",
    "load_in_4bit": "evomerge scores in the recipe's dtype (evomerge.eval.dtype); quantized scoring is not supported",
    "timeout": "evomerge's budget is evaluations (--max-fevals); Ctrl-C stops a run that `evomerge resume` continues",
}


def _mergekit_evolve_options(command):
    """mergekit-evolve's options without a meaning here: refused or ignored, each with its reason."""
    for option in (
        click.option("--storage-path", hidden=True),
        click.option("--strategy", "-s", hidden=True),
        click.option("--in-memory/--no-in-memory", default=None, hidden=True),
        click.option("--merge-cuda/--no-merge-cuda", default=None, hidden=True),
        click.option("--reshard/--no-reshard", default=None, hidden=True),
        click.option("--save-final-model/--no-save-final-model", default=None, hidden=True),
        click.option("--i-understand-the-depths-of-the-evils-i-am-unleashing", "allow_benchmark_tasks",
                     is_flag=True, default=None, hidden=True),
        click.option("--vllm/--no-vllm", default=None, hidden=True),
        click.option("--allow-crimes/--no-allow-crimes", default=None, hidden=True),
        click.option("--load-in-8bit", is_flag=True, default=None, hidden=True),
        click.option("--load-in-4bit", is_flag=True, default=None, hidden=True),
        click.option("--timeout", type=float, hidden=True),
        click.option("--wandb/--no-wandb", default=None, hidden=True),
        click.option("--wandb-project", hidden=True),
        click.option("--wandb-entity", hidden=True),
    ):
        command = option(command)
    return command


def _check_mergekit_evolve_options(given: dict) -> None:
    for name, reason in _EVOLVE_REFUSED.items():
        if given.get(name):
            raise EvomergeError(reason, key=f"--{name}")
    for name, value in given.items():
        if name in _EVOLVE_IGNORED and value is not None:
            click.echo(f"ignoring --{name.replace('_', '-')}: {_EVOLVE_IGNORED[name]}", err=True)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<recipe>-<time>).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue the run in this directory.")
@_device
@click.option("--seed", "--random-seed", "seed", type=click.IntRange(0, 2**32 - 1), help="Overrides evomerge.seed.")
@click.option("--evaluations", "--max-fevals", "evaluations", type=click.IntRange(min=1),
              help="Overrides evomerge.budget.evaluations.")
@click.option("--searcher", help="Overrides evomerge.searcher.name (cma, ga, optuna, random, llm).")
@click.option("--sigma0", type=click.FloatRange(min=0, min_open=True), help="Overrides the cma searcher's sigma0.")
@click.option("--force-population-size", "popsize", type=click.IntRange(min=1),
              help="Overrides the cma searcher's popsize (mergekit-evolve's name).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Overrides evomerge.eval.batch_size.")
@click.option("--task-search-path", "task_paths", multiple=True, type=click.Path(path_type=Path, resolve_path=True),
              help="A folder of lm-eval task YAML files, added to evomerge.task_paths (repeatable).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folders to run.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (.bin/.pt), which can run code.")
@_workers
@_gpus_per_worker
@_ray_address
@_allow_changed
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_mergekit_evolve_options
@_friendly_errors
def search(recipe, out, resume_dir, device, seed, evaluations, searcher, sigma0, popsize, batch_size, task_paths,
           trust_remote_code, allow_pickle, workers, gpus_per_worker, ray_address, allow_changed, quiet,
           **mergekit_evolve):
    """Evolve RECIPE: every candidate merged in memory and scored with lm-eval.

    RECIPE may also be a mergekit-evolve config (a file with `genome:`), searched as it would be
    (see `evomerge convert`); mergekit-evolve's options are accepted where they mean something here."""
    from evomerge.run.loop import SearchOptions, resume_search, start_search

    _check_mergekit_evolve_options(mergekit_evolve)
    if resume_dir is not None:
        amended = any((sigma0, popsize, batch_size, task_paths))
        if recipe is not None or seed is not None or searcher is not None or amended:
            raise EvomergeError("--resume continues a run with its own recipe, seed and searcher; give only the "
                                "run directory (and --device, --evaluations, --workers or --ray-address)",
                                key="--resume")
        _finish(resume_search(resume_dir, device=device, evaluations=evaluations, quiet=quiet, workers=workers,
                              ray_address=ray_address, allow_changed=allow_changed,
                              gpus_per_worker=gpus_per_worker), resume_dir)
        return
    if recipe is None:
        raise EvomergeError("expected a RECIPE file (or --resume RUN_DIR)")
    out = out or _default_run_dir(recipe)
    options = SearchOptions(device=device, seed=seed, evaluations=evaluations, searcher=searcher,
                            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, quiet=quiet,
                            workers=workers or 0, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                            batch_size=batch_size,
                            searcher_options={k: v for k, v in {"sigma0": sigma0, "popsize": popsize}.items() if v},
                            task_paths=tuple(str(p) for p in task_paths))
    _finish(start_search(recipe, out, options), out)


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="The recipe file (default: print it).")
@_friendly_errors
def convert(config: Path, out: Path) -> None:
    """Write the evomerge recipe for a mergekit-evolve CONFIG: mergekit keys at the genome's
    starting point (for mergekit-yaml), the genome, tasks and defaults in its evomerge section."""
    from evomerge.recipe.evolve_config import recipe_text
    from evomerge.recipe.parsing import parse_yaml, read_text

    raw = parse_yaml(read_text(config), config)
    if not isinstance(raw, dict) or "genome" not in raw:
        raise EvomergeError("expected a mergekit-evolve config, with a `genome:` key", path=config)
    text = recipe_text(raw, config, out_dir=out.resolve().parent if out else None)
    if out:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_device
@click.option("--evaluations", type=click.IntRange(min=1), help="A new, larger budget.")
@_workers
@_gpus_per_worker
@_ray_address
@_allow_changed
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def resume(run_dir, device, evaluations, workers, gpus_per_worker, ray_address, allow_changed, quiet):
    """Continue a stopped run (Ctrl-C, SIGTERM or kill -9) without re-evaluating anything stored.

    It runs on the run's own workers unless --workers says otherwise."""
    from evomerge.run.loop import resume_search

    _finish(resume_search(run_dir, device=device, evaluations=evaluations, quiet=quiet, workers=workers,
                          ray_address=ray_address, allow_changed=allow_changed, gpus_per_worker=gpus_per_worker),
            run_dir)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/demo-<time>).")
@click.option("--evaluations", type=click.IntRange(min=1), help="Overrides the demo's budget.")
@_device
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def demo(out, evaluations, device, quiet):
    """Build the zoo if needed, evolve recipes/demo.yaml and print the report table."""
    from evomerge.paths import RECIPES_DIR, require_checkout
    from evomerge.run.loop import SearchOptions, start_search
    from evomerge.zoo.build import build_zoo

    require_checkout()
    build_zoo(DEFAULT_ZOO_DIR)
    recipe = RECIPES_DIR / "demo.yaml"
    out = out or _default_run_dir(recipe)
    _finish(start_search(recipe, out, SearchOptions(device=device, evaluations=evaluations, quiet=quiet)), out)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--device-memory", help="The device's memory, e.g. 80GiB (default: this machine's device's).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers sharing the device.")
@_device
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folders to run.")
@_friendly_errors
def plan(recipe, device_memory, workers, device, trust_remote_code):
    """What RECIPE's search needs (memory in each parents: mode, genes, documents, the merged architecture),
    from configs and safetensors headers: no weight is loaded."""
    from evomerge.recipe.loading import load_recipe
    from evomerge.recipe.stages import check_stage_parents
    from evomerge.run.memory_plan import documents_per_evaluation, make_plan, parse_bytes

    loaded = load_recipe(recipe)
    check_stage_parents(loaded.stages, loaded.path, allow_pickle=True)
    memory = parse_bytes(device_memory) if device_memory else None
    with mergekit_refusals(loaded.path):
        found = make_plan(loaded, device=device, memory=memory, workers=workers, trust_remote_code=trust_remote_code)
    for line in found.lines(documents_per_evaluation(loaded)):
        click.echo(line)
    problem = found.refusal()
    if problem:
        raise EvomergeError(problem, path=loaded.path, key="evomerge.parents")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the Hugging Face model.")
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which candidate: 1 is the best of the run.")
@click.option("--device", default=None, help="Merge on this device (default: the one that scored the candidate).")
@click.option("--allow-mismatch", is_flag=True,
              help="Export even if the weights differ from the scored ones (the card says so).")
@click.option("--push-to-hub", "repo_id", help="Also upload the folder to this Hub repository (owner/name).")
@click.option("--private", is_flag=True, help="Create the Hub repository as private.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def export(run_dir, out, rank, device, allow_mismatch, repo_id, private, quiet):
    """Write a run's candidate as a Hugging Face model folder with a model card: merged again as the
    search merged it and checked against the fingerprint of the weights it was scored with."""
    from evomerge.outputs.export import export_run

    folder = export_run(run_dir, out, rank=rank, quiet=quiet, device=device, allow_mismatch=allow_mismatch)
    click.echo(f"exported to {folder}")
    if repo_id:
        from evomerge.outputs.hub import push_folder

        click.echo(f"pushed to {push_folder(folder, repo_id, private=private or None)}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_friendly_errors
def report(run_dir):
    """Plots of a run (fitness, winner's parameters, per-task scores, lineage) and an HTML page."""
    from evomerge.outputs.report import write_report

    for path in write_report(run_dir):
        click.echo(str(path))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_friendly_errors
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


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the tree, tables and pictures.")
@click.option("--reference", help="Root the tree at this model (added as a leaf if not among MODELS).")
@click.option("--tasks", multiple=True, help="lm-eval tasks to score each model with (comma-separated or repeated).")
@click.option("--task-path", "task_paths", multiple=True, type=click.Path(path_type=Path),
              help="A folder of lm-eval task YAML files (repeatable).")
@click.option("--suggest-groups", type=click.IntRange(min=1),
              help="Print the K contiguous layer groups that best separate where the models differ.")
@_device
@_friendly_errors
def tree(models, out, reference, tasks, task_paths, suggest_groups, device):
    """A neighbor-joining family tree of MODELS (folders or Hub ids) from distances between their weights."""
    from evomerge.tree.family import write_family_tree
    from evomerge.tree.joining import suggest_layer_groups

    names = [name for entry in tasks for name in entry.split(",") if name]
    distances, files = write_family_tree(models, out, reference=reference, tasks=names, task_paths=task_paths,
                                         device=device)
    for path in files:
        click.echo(str(path))
    if suggest_groups:
        profile = distances.layer_profile()
        ranges = suggest_layer_groups(profile, suggest_groups)
        click.echo(f"# {suggest_groups} layer groups; mean distance between the models per group:")
        for start, end in ranges:
            click.echo(f"#   layers {start}-{end - 1}: {profile[start:end].mean():.3g}")
        click.echo(f"layer_groups: {[list(r) for r in ranges]}")


if __name__ == "__main__":
    main()
