"""The `evomerge` command line."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

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


if __name__ == "__main__":
    main()
