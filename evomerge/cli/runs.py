"""The commands that run a search: `search` (mergekit-evolve's options accepted where they mean
something here), `resume` and `demo`; each prints the report table when the run finishes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from evomerge.cli.options import friendly_errors, run_options
from evomerge.errors import EvomergeError
from evomerge.paths import DEFAULT_ZOO_DIR
from evomerge.run_options import RunOptions

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


def _default_run_dir(recipe: Path) -> Path:
    return Path("runs") / f"{recipe.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _finish(search, out: Path) -> None:
    from evomerge.outputs.finish import finish_run
    from evomerge.outputs.text import render_markdown
    from evomerge.run.loop import SearchInterrupted
    from evomerge.run.observers.study import storage_url

    try:
        search.run()
    except SearchInterrupted:
        click.echo(f"stopped; everything evaluated is stored. Continue with: evomerge resume {out}", err=True)
        sys.exit(130)
    report = finish_run(search.store, search.recipe, search.space, search.worker, search.confirmation, search.options)
    click.echo(render_markdown(report))
    click.echo(f"run directory: {out} (best recipe: {out / 'best.yaml'})")
    click.echo(f"the run as an Optuna study: optuna-dashboard {storage_url(search.store)}")


_allow_changed = click.option("--allow-changed", is_flag=True,
                              help="Resume although a parent, task, fitness module or library changed (recorded).")
_RESUMABLE = ("device", "workers", "gpus_per_worker", "ray_address", "quiet")  # what a resumed run may change


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<recipe>-<time>).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue the run in this directory.")
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
@run_options(*RunOptions.model_fields)
@_allow_changed
@_mergekit_evolve_options
@friendly_errors
def search(recipe, out, resume_dir, seed, evaluations, searcher, sigma0, popsize, batch_size, task_paths,
           options: RunOptions, allow_changed, **mergekit_evolve):
    """Evolve RECIPE: every candidate merged in memory and scored with lm-eval.

    RECIPE may also be a mergekit-evolve config (a file with `genome:`), searched as it would be
    (see `evomerge convert`); mergekit-evolve's options are accepted where they mean something here."""
    from evomerge.run.start import SearchOptions, resume_search, start_search

    _check_mergekit_evolve_options(mergekit_evolve)
    if resume_dir is not None:
        amended = any((sigma0, popsize, batch_size, task_paths))
        if recipe is not None or seed is not None or searcher is not None or amended:
            raise EvomergeError("--resume continues a run with its own recipe, seed and searcher; give only the "
                                "run directory (and --device, --evaluations, --workers or --ray-address)",
                                key="--resume")
        _finish(resume_search(resume_dir, options, evaluations=evaluations, allow_changed=allow_changed), resume_dir)
        return
    if recipe is None:
        raise EvomergeError("expected a RECIPE file (or --resume RUN_DIR)")
    out = out or _default_run_dir(recipe)
    overrides = SearchOptions(**options.model_dump(), seed=seed, evaluations=evaluations, searcher=searcher,
                              batch_size=batch_size, task_paths=tuple(str(p) for p in task_paths),
                              searcher_options={k: v for k, v in {"sigma0": sigma0, "popsize": popsize}.items() if v})
    _finish(start_search(recipe, out, overrides), out)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--evaluations", type=click.IntRange(min=1), help="A new, larger budget.")
@run_options(*_RESUMABLE)
@_allow_changed
@friendly_errors
def resume(run_dir, evaluations, options: RunOptions, allow_changed):
    """Continue a stopped run (Ctrl-C, SIGTERM or kill -9) without re-evaluating anything stored.

    It runs on the run's own workers unless --workers says otherwise."""
    from evomerge.run.start import resume_search

    _finish(resume_search(run_dir, options, evaluations=evaluations, allow_changed=allow_changed), run_dir)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/demo-<time>).")
@click.option("--evaluations", type=click.IntRange(min=1), help="Overrides the demo's budget.")
@run_options("device", "quiet")
@friendly_errors
def demo(out, evaluations, options: RunOptions):
    """Build the zoo if needed, evolve recipes/demo.yaml and print the report table.

    The zoo is built once in EVOMERGE_HOME: recipes/ in a checkout, else the user's cache directory,
    where the demo recipe is written beside it."""
    from evomerge.paths import EVOMERGE_HOME, RECIPES_DIR
    from evomerge.run.start import SearchOptions, start_search
    from evomerge.zoo.build import build_zoo
    from evomerge.zoo.recipe import write_demo_recipe

    build_zoo(DEFAULT_ZOO_DIR)
    recipe = RECIPES_DIR / "demo.yaml"
    if EVOMERGE_HOME != RECIPES_DIR:  # the recipe's zoo/ and tasks are relative to recipes/
        recipe = write_demo_recipe(EVOMERGE_HOME, DEFAULT_ZOO_DIR)
    out = out or _default_run_dir(recipe)
    _finish(start_search(recipe, out, SearchOptions(**options.model_dump(), evaluations=evaluations)), out)
