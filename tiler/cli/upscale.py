import click

from .options import (execution_options, plan_kwargs, reports_errors, run_and_report, run_options,
                      upscale_arguments, verbosity)
from .plan import print_plan


@click.command("upscale")
@upscale_arguments
@run_options
@execution_options
@click.option("--batch-size", type=click.IntRange(min=1),
              help="LDM: tiles per UNet call [16 on CUDA, 4 on CPU]; never changes the result.")
@click.option("--compile", "compile_model", is_flag=True, help="LDM: torch.compile the UNet and decoder.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit (same as `tiler plan`).")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@verbosity
@reports_errors
def upscale_command(workdir, keep_workdir, overwrite, cluster, scheduler, workers, retries,
                    batch_size, compile_model, dry_run, as_json, verbose, quiet, **params):
    """Upscale INPUT into OUTPUT [INPUT-STEM_x4.tif]; re-running resumes."""
    from ..upscale import plan_upscale

    plan = plan_upscale(params["input_path"], params["output_path"], **plan_kwargs(params))
    if dry_run:
        print_plan(plan, as_json)
        return
    run_and_report(plan, workdir=workdir, overwrite=overwrite, keep_workdir=keep_workdir,
                   cluster=cluster, scheduler=scheduler, workers=workers, retries=retries,
                   batch_size=batch_size, compile_model=compile_model, device=params["device"],
                   allow_pickle=params["allow_pickle"], quiet=quiet)
