import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import RASTER, apply, output_options, run_options, verbosity
from tiler.cli.running import print_plan, report_run


@click.command("export")
@click.argument("input_path", metavar="INPUT", type=RASTER)
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@lambda command: apply(command, output_options())
@run_options
@click.option("--workers", type=click.IntRange(min=1), help="Worker threads [all cores].")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@verbosity
@reports_errors
def export_command(
    input_path,
    output_path,
    bands,
    output_format,
    creation_options,
    workdir,
    keep_workdir,
    overwrite,
    workers,
    dry_run,
    as_json,
    verbose,
    quiet,
):
    """Copy INPUT to OUTPUT in another format, with other creation options or bands (e.g. a COG);
    georeferencing and nodata kept, resumable, written as OUTPUT.partial then renamed."""
    from tiler.errors import BadParameter
    from tiler.execution.cluster import ExecutionOptions
    from tiler.execution.run import run_plan
    from tiler.tasks.classical import plan_export

    plan = plan_export(
        input_path,
        output_path,
        bands=bands,
        output_format=output_format,
        creation_overrides=creation_options,
    )
    if dry_run:
        print_plan(plan, as_json)
        return
    if as_json:
        raise BadParameter("json", "prints the plan: use it with --dry-run")
    report = run_plan(
        plan,
        workdir=workdir,
        overwrite=overwrite,
        keep_workdir=keep_workdir,
        progress=not quiet,
        execution=ExecutionOptions(cluster="threads", workers=workers),
    )
    report_run(plan, report, quiet)
