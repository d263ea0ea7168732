"""The `evomerge` command line."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from evomerge.errors import EvomergeError
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
            click.echo(f"error: {error}", err=True)
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
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_ZOO_DIR, show_default=True,
              help="Folder for the zoo's models and manifest.json.")
@click.option("--force", is_flag=True, help="Rebuild even if a matching zoo exists.")
@_friendly_errors
def zoo_build(out: Path, force: bool) -> None:
    """Train (or reuse) the base model and its specialists."""
    from evomerge.zoo.build import build_zoo

    manifest = build_zoo(out, force=force)
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
@add_merge_options
@_friendly_errors
def merge(recipe: Path, out: Path, in_memory: bool, merge_options: MergeOptions) -> None:
    """A drop-in for mergekit-yaml that also applies evomerge's noise.

    A recipe with a search section merges at its starting point (the recipe's own
    values). The recipe's evomerge seed is mergekit's --random-seed unless given.
    """
    from evomerge.model_folder import write_in_memory, write_with_mergekit
    from evomerge.recipe import load_recipe
    from evomerge.space import SearchSpace

    loaded = load_recipe(recipe)
    candidate = SearchSpace.from_recipe(loaded).starting_point()
    if merge_options.random_seed is not None:
        candidate = dataclasses.replace(candidate, seed=merge_options.random_seed)
    if in_memory:
        write_in_memory(candidate, out, device=merge_options.device, trust_remote_code=merge_options.trust_remote_code)
    else:
        write_with_mergekit(candidate, out, merge_options)
    click.echo(f"merged {recipe} into {out}")


if __name__ == "__main__":
    main()
