from __future__ import annotations

import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import upscale_arguments, verbosity
from tiler.cli.running import plan_kwargs, print_plan


@click.command("plan")
@upscale_arguments
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@verbosity
@reports_errors
def plan_command(as_json, verbose, quiet, **params):
    """Print the plan `tiler upscale` would run with the same arguments."""
    from tiler.tasks import plan_upscale

    print_plan(
        plan_upscale(params["input_path"], params["output_path"], **plan_kwargs(params)), as_json
    )
