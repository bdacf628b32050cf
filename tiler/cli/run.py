import json

import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import verbosity


@click.command("run")
@click.argument("workflow_path", metavar="WORKFLOW", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a workflow key (repeatable), e.g. --set steps[0].scale=2, "
    "--set steps.up.overlap=8, --set cluster.workers=4.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print every file and step with its tiles, regions and estimated compute; "
    "loads no model and writes nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the job as JSON.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first file that fails.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that tiler did not write.")
@verbosity
@reports_errors
def run_command(workflow_path, overrides, dry_run, as_json, fail_fast, overwrite, verbose, quiet):
    """Run the YAML WORKFLOW over its input files; re-running skips what is up to date and
    resumes what was cut short. Exit 0 only if every file succeeded."""
    import sys

    from tiler.workflow import load_workflow
    from tiler.workflow.runner import WorkflowRunner, input_files

    workflow, source = load_workflow(workflow_path, overrides)
    files = input_files(workflow, source)
    say = (lambda line: None) if quiet else (lambda line: click.echo(f"tiler: {line}", err=True))
    runner = WorkflowRunner(workflow, source, overwrite=overwrite, progress=not quiet, say=say)
    outcomes = runner.run(files, dry_run=dry_run, fail_fast=fail_fast)
    if dry_run:
        job = [_file_summary(outcome) for outcome in outcomes]
        click.echo(json.dumps(job, indent=2) if as_json else _job_table(job))
    elif not quiet or any(outcome.status == "failed" for outcome in outcomes):
        click.echo(_final_summary(outcomes), err=True)  # -q never hides what failed
    if any(outcome.status == "failed" for outcome in outcomes):
        sys.exit(1)


def _file_summary(outcome) -> dict:
    steps = []
    for step in outcome.steps:
        entry = {"step": step.step, "status": step.status, "output": step.output}
        if step.plan is not None:
            summary = step.plan.summary()
            entry |= {
                key: summary[key]
                for key in (
                    "model",
                    "scale",
                    "input_size",
                    "output_size",
                    "tiles_computed",
                    "regions",
                )
            }
            entry["unet_evaluations"] = summary.get("unet_evaluations", 0)
            entry |= {  # a text-conditioned model's prompt, as filled in for this file
                key: summary[key]
                for key in ("prompt", "guidance_scale", "noise_level")
                if key in summary
            }
            entry["output_megapixels"] = round(
                step.plan.output.width * step.plan.output.height / 1e6, 3
            )
        if step.error:
            entry["error"] = step.error
        steps.append(entry)
    return {"input": str(outcome.input), "status": outcome.status, "steps": steps}


def _job_table(job: list[dict]) -> str:
    lines, totals = (
        [],
        {"runs": 0, "tiles_computed": 0, "unet_evaluations": 0, "output_megapixels": 0.0},
    )
    for entry in job:
        lines.append(f"{entry['input']}: {entry['status']}")
        for step in entry["steps"]:
            if "error" in step:
                lines.append(f"  {step['step']:<12} failed: {step['error']}")
                continue
            lines.append(
                f"  {step['step']:<12} {step['status']:<10} {step['model']} x{step['scale']} "
                f"{step['input_size'][0]}x{step['input_size'][1]} -> "
                f"{step['output_size'][0]}x{step['output_size'][1]}, "
                f"{step['regions']} regions, {step['tiles_computed']} tiles"
                + (
                    f", {step['unet_evaluations']} UNet evaluations"
                    if step["unet_evaluations"]
                    else ""
                )
                + f" -> {step['output']}"
            )
            if step["status"] == "would run":
                totals["runs"] += 1
                for key in ("tiles_computed", "unet_evaluations", "output_megapixels"):
                    totals[key] += step[key]
    lines.append(
        f"total: {len(job)} files, {totals['runs']} step runs to do: "
        f"{totals['tiles_computed']} tiles, {totals['unet_evaluations']} UNet evaluations, "
        f"{totals['output_megapixels']:.1f} output megapixels"
    )
    return "\n".join(lines)


def _final_summary(outcomes) -> str:
    counts = {
        status: sum(o.status == status for o in outcomes)
        for status in ("done", "skipped", "failed")
    }
    lines = [
        f"tiler: {counts['done']} done, {counts['skipped']} skipped (up to date), "
        f"{counts['failed']} failed, of {len(outcomes)} files"
    ]
    lines += [f"tiler: failed: {o.input}: {o.error}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)
