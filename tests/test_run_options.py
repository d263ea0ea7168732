"""The run's options are one object: the command line's options are generated from its fields, and a
command gets them built once, as one RunOptions that knows which of them were given."""

import click
from click.testing import CliRunner

from evomerge.cli.options import run_options
from evomerge.cli.runs import search
from evomerge.run_options import RunOptions


@click.command()
@run_options("device", "workers", "gpus_per_worker", "quiet")
def show(options: RunOptions) -> None:
    click.echo(options.model_dump_json())
    click.echo(",".join(sorted(options.model_fields_set)))


def test_a_command_gets_one_options_object_of_what_was_given():
    result = CliRunner().invoke(show, ["--num-gpus", "2", "--quiet"])  # mergekit-evolve's name for --workers
    assert result.exit_code == 0, result.output
    built, given = result.output.splitlines()
    assert RunOptions.model_validate_json(built) == RunOptions(workers=2, quiet=True)
    assert given == "quiet,workers"  # a resumed run keeps its own device


def test_the_fields_bounds_are_the_options_bounds():
    assert CliRunner().invoke(show, ["--workers", "-1"]).exit_code == 2
    assert CliRunner().invoke(show, ["--gpus-per-worker", "0"]).exit_code == 2
    assert CliRunner().invoke(show, ["--gpus-per-worker", "0.5"]).exit_code == 0


def test_search_offers_every_run_option_with_its_description():
    offered = {parameter.name: parameter for parameter in search.params}
    for name, field in RunOptions.model_fields.items():
        assert offered[name].help == field.description
