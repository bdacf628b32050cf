import json

import click

from .options import plan_kwargs, reports_errors, upscale_arguments, verbosity


def print_plan(plan, as_json: bool):
    summary = plan.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        if key == "workdir_bytes_max":
            key, value = "workdir_max", f"{value / 2**30:.2f} GiB (uncompressed)"
        elif isinstance(value, list):
            value = " x ".join(map(str, value)) if key.endswith(("size", "grid")) else ",".join(map(str, value))
        click.echo(f"{key:<{width}}  {value}")


@click.command("plan")
@upscale_arguments
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@verbosity
@reports_errors
def plan_command(as_json, verbose, quiet, **params):
    """Print the plan `tiler upscale` would run with the same arguments."""
    from ..upscale import plan_upscale

    print_plan(plan_upscale(params["input_path"], params["output_path"], **plan_kwargs(params)), as_json)
