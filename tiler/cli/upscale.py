import click

from .options import (apply, execution_options, plan_kwargs, reports_errors, run_options, run_or_print,
                      upscale_arguments, verbosity)


@click.command("upscale")
@upscale_arguments
@run_options
@execution_options
@click.option("--batch-size", type=click.IntRange(min=1),
              help="LDM: tiles per UNet call [16 on CUDA, 4 on CPU]; never changes the result.")
@click.option("--compile", "compile_model", is_flag=True, help="LDM: torch.compile the UNet and decoder.")
@lambda command: apply(command, [
    click.option("--dry-run", is_flag=True, help="Print the plan and exit (same as `tiler plan`)."),
    click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")])
@verbosity
@reports_errors
def upscale_command(verbose, **params):
    """Upscale INPUT into OUTPUT [INPUT-STEM_x4.tif]; re-running resumes."""
    from ..upscale import plan_upscale

    run_or_print(plan_upscale(params["input_path"], params["output_path"], **plan_kwargs(params)),
                 params)
