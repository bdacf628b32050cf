import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import (
    apply,
    batch_size_option,
    execution_options,
    run_options,
    threads_option,
    upscale_arguments,
    verbosity,
)
from tiler.cli.running import plan_kwargs, run_or_print


@click.command("upscale")
@upscale_arguments
@run_options
@execution_options
@batch_size_option("LDM: ")
@threads_option("LDM: ")
@click.option("--compile", is_flag=True, help="LDM: torch.compile the UNet and decoder.")
@lambda command: apply(
    command,
    [
        click.option(
            "--dry-run", is_flag=True, help="Print the plan and exit (same as `tiler plan`)."
        ),
        click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON."),
    ],
)
@verbosity
@reports_errors
def upscale_command(verbose, **params):
    """Upscale INPUT into OUTPUT [INPUT-STEM_x4.tif]; re-running resumes."""
    from tiler.tasks import plan_upscale

    run_or_print(
        plan_upscale(params["input_path"], params["output_path"], **plan_kwargs(params)), params
    )
