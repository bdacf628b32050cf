"""Running what a command planned: print the plan (``--dry-run``), or run it and print the one
summary line."""

from __future__ import annotations

import json

import click

from tiler.errors import BadParameter


def run_or_print(plan, params: dict):
    """``--dry-run``: print the plan; otherwise run it with the command's run, execution and model
    options and print the summary."""
    from tiler.cli.running import print_plan
    from tiler.execution.cluster import ExecutionOptions
    from tiler.execution.run import run_plan
    from tiler.ldm.options import RuntimeOptions

    if params["dry_run"]:
        print_plan(plan, params["as_json"])
        return
    if params.get("as_json"):
        raise BadParameter("json", "prints the plan: use it with --dry-run")
    runtime = RuntimeOptions.from_keys(params)
    execution = ExecutionOptions.from_config(
        **{key: params[key] for key in ("cluster", "scheduler", "workers", "retries")}
    )
    report = run_plan(
        plan,
        workdir=params["workdir"],
        overwrite=params["overwrite"],
        keep_workdir=params["keep_workdir"],
        progress=not params["quiet"],
        runtime=runtime,
        execution=execution,
    )
    report_run(plan, report, params["quiet"])


def report_run(plan, report, quiet: bool):
    """The one summary line after a successful run."""
    if quiet:
        return
    out = plan.output
    stages = ", ".join(f"{s.name} {s.computed}/{s.total}" for s in report.stages[:-1])
    click.echo(
        f"tiler: wrote {report.output} ({out.width} x {out.height} x {out.count} "
        f"{out.dtype}) in {report.seconds:.1f} s; computed {stages}"
        f"{' (resumed)' if report.resumed else ''}",
        err=True,
    )


def plan_kwargs(params: dict) -> dict:
    keys = ("model", "scale", "bands", "output_format", "tile", "overlap", "region", "halo")
    kwargs = {key: params[key] for key in keys}
    kwargs["creation_overrides"] = params["creation_options"]
    kwargs["diffusion"] = diffusion_options(params)
    return kwargs


def diffusion_options(params: dict):
    """The sampling options among a command's parameters (--range and --back-project only where
    it has them)."""
    from tiler.ldm.options import DiffusionOptions

    return DiffusionOptions.from_keys(params)


def print_plan(plan, as_json: bool):
    from tiler.tasks.memory import largest_unit

    unit, needed = largest_unit(plan)
    summary = plan.summary() | {"unit_memory_max": needed, "unit_memory_max_of": unit}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        if key == "workdir_bytes_max":
            key, value = "workdir_max", f"{value / 2**30:.2f} GiB (uncompressed)"
        elif key == "unit_memory_max":
            value = f"{value / 2**30:.2f} GiB (about; one {unit})"
        elif key == "unit_memory_max_of":
            continue
        elif isinstance(value, list):
            value = (
                " x ".join(map(str, value))
                if key.endswith(("size", "grid"))
                else ",".join(map(str, value))
            )
        click.echo(f"{key:<{width}}  {value}")
