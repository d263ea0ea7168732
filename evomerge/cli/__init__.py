"""The `evomerge` command line: the only package that knows click. The run's options (RunOptions) are
built here once, from click options generated from their fields (options.py), and passed whole; the
commands that run a search are in runs.py, the others in tools.py."""

from __future__ import annotations

import click

from evomerge.cli import runs, tools


@click.group()
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="evomerge")
def main(debug: bool) -> None:
    """Evolve mergekit merge recipes, scored with lm-evaluation-harness."""


for command in (tools.zoo, tools.merge, runs.search, tools.convert, tools.schema, runs.resume, runs.demo, tools.plan,
                tools.export, tools.report, tools.study, tools.tree):
    main.add_command(command)
