"""Options shared by the commands, and the one place where errors become exit codes."""

from __future__ import annotations

import functools
import logging
import sys

import click

from ..errors import TilerError


def parse_creation_options(ctx, param, values) -> dict[str, str]:
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form NAME=VALUE, e.g. COMPRESS=ZSTD")
        options[key.strip().upper()] = value.strip()
    return options


def apply(command, decorators):
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def output_options() -> list:
    """Which bands go out, and how the output is written (upscale, export)."""
    return [
        click.option("-b", "--bidx", "bands", metavar="LIST",
                     help="Bands to process, 1-based, comma-separated (e.g. 3,2,1). Default: all."),
        click.option("--format", "output_format", type=click.Choice(["GTiff", "COG", "Zarr"]),
                     help="Output format. Default: from OUTPUT's extension (.tif, .zarr)."),
        click.option("--co", "creation_options", multiple=True, metavar="NAME=VALUE",
                     callback=parse_creation_options,
                     help="Driver creation option (repeatable), e.g. --co COMPRESS=ZSTD."),
    ]


def run_options(command):
    """The workdir and what may be replaced (every command that writes an output)."""
    return apply(command, [
        click.option("--workdir", type=click.Path(file_okay=False),
                     help="Zarr workdir for intermediate arrays and resume state [OUTPUT.tiler]."),
        click.option("--keep-workdir", is_flag=True, help="Keep the workdir after success."),
        click.option("--overwrite", is_flag=True,
                     help="Replace an existing OUTPUT or a workdir of another plan."),
    ])


def upscale_arguments(command):
    """INPUT [OUTPUT] and the options that shape the plan (shared by upscale and plan)."""
    return apply(command, [
        click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, exists=True)),
        click.argument("output_path", metavar="[OUTPUT]", required=False, type=click.Path()),
        click.option("--model", default="CompVis/ldm-super-resolution-4x-openimages", show_default=True,
                     help="LDM super-resolution model (hub id or local diffusers folder), or a "
                          "classical model: nearest, bicubic, lanczos."),
        click.option("--scale", type=int,
                     help="Upscaling factor (classical models; default 4). LDM models fix their own."),
        *output_options(),
        click.option("--tile", type=int, help="Tile size in latent px [model default]."),
        click.option("--overlap", type=int, help="Tile overlap in latent px [model default]."),
        click.option("--region", type=int, help="Region (unit of work) size in latent px [model default]."),
        click.option("--halo", type=int, help="Extra latent px around each region [model default]."),
        click.option("--steps", type=int, help="LDM: denoising steps [50]."),
        click.option("--eta", type=float, help="LDM: DDIM eta, 0 = deterministic [0]."),
        click.option("--seed", type=int, help="LDM: seed of the keyed noise [0]."),
        click.option("--sampler", help="LDM: ddim, dpm++, dpm++-sde, euler, heun, lms, pndm, unipc "
                                       "or a diffusers scheduler class name [ddim]."),
        click.option("--device", default="auto", show_default=True, help="LDM: auto, cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                     help="LDM: float32 on CPU, bfloat16 on CUDA by default."),
        click.option("--range", "value_range", metavar="MIN,MAX",
                     help="LDM: raster values mapped to the model's [-1, 1] [uint8: 0,255; else "
                          "0.1/99.9 percentiles of the whole raster]."),
        click.option("--decode-tile", type=int, help="LDM: VQ decode tile in latent px [128]."),
        click.option("--decode-halo", type=int, help="LDM: VQ decode halo in latent px [32]."),
        click.option("--allow-pickle", is_flag=True,
                     help="LDM: allow pickle (.bin) weights, which can run code when loaded."),
    ])


def run_and_report(plan, *, workdir, overwrite, keep_workdir, cluster, scheduler, workers, retries,
                   batch_size, compile_model, device, allow_pickle, quiet):
    """Run ``plan`` with the run, execution and model options of the CLI; print the summary."""
    from ..cluster import ExecutionOptions
    from ..tasks.superres import RuntimeOptions
    from ..upscale import run_upscale

    runtime = RuntimeOptions(device=device, batch_size=batch_size, compile=compile_model,
                             allow_pickle=allow_pickle)
    report = run_upscale(plan, workdir=workdir, overwrite=overwrite, keep_workdir=keep_workdir,
                         progress=not quiet, runtime=runtime,
                         execution=ExecutionOptions.from_config(cluster=cluster, scheduler=scheduler,
                                                                workers=workers, retries=retries))
    report_run(plan, report, quiet)


def report_run(plan, report, quiet: bool):
    """The one summary line after a successful run."""
    if quiet:
        return
    out = plan.output
    stages = ", ".join(f"{s.name} {s.computed}/{s.total}" for s in report.stages[:-1])
    click.echo(f"tiler: wrote {report.output} ({out.width} x {out.height} x {out.count} "
               f"{out.dtype}) in {report.seconds:.1f} s; computed {stages}"
               f"{' (resumed)' if report.resumed else ''}", err=True)


def plan_kwargs(params: dict) -> dict:
    from ..tasks.superres import DiffusionOptions

    keys = ("model", "scale", "bands", "output_format", "tile", "overlap", "region", "halo")
    kwargs = {key: params[key] for key in keys}
    kwargs["creation_overrides"] = params["creation_options"]
    kwargs["diffusion"] = DiffusionOptions(
        **{key: params[key] for key in ("steps", "eta", "seed", "sampler", "device", "dtype",
                                         "value_range", "decode_tile", "decode_halo", "allow_pickle")})
    return kwargs


def execution_options(command):
    """Where to run; unset options come from the ``tiler`` section of Dask's config files."""
    from ..cluster import CLUSTER_KINDS

    decorators = [
        click.option("--cluster", type=click.Choice(CLUSTER_KINDS),
                     help="threads: this process; local: Dask worker processes here (one per GPU, "
                          "or --workers CPU workers); slurm, pbs, kubernetes: Dask clusters "
                          "configured in Dask's config files [auto: local with 2+ GPUs, else threads]."),
        click.option("--scheduler", metavar="ADDRESS",
                     help="Run on the running Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786)."),
        click.option("--workers", type=click.IntRange(min=1),
                     help="threads: worker threads [classical: all cores; LDM: 2 per GPU, or all "
                          "cores]; local: CPU worker processes [all cores]; slurm/pbs: jobs; "
                          "kubernetes: pods [1]."),
        click.option("--retries", type=click.IntRange(min=0),
                     help="Dask: extra attempts of a failing unit before the run stops [2]."),
    ]
    return apply(command, decorators)


def verbosity(command):
    command = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")(command)
    return click.option("-v", "--verbose", is_flag=True, help="Log details; tracebacks on errors.")(command)


def reports_errors(command):
    """Turn library errors into one line on stderr and the exit code they carry."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        _log_to_stderr(verbose)
        try:
            return command(*args, **kwargs)
        except TilerError as exc:
            _fail(str(exc), exc.exit_code, verbose)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", 1, verbose)
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume", 130, verbose)
        except Exception as exc:  # a bug: say so on one line; -v shows the traceback
            _fail(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, verbose)

    return wrapper


def _log_to_stderr(verbose: bool):
    """tiler's own log lines (not those of the libraries, e.g. Dask's) as ``tiler: message``."""
    logger = logging.getLogger("tiler")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tiler: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int, verbose: bool):
    if verbose:
        import traceback

        traceback.print_exc()
    for line in message.splitlines() or [message]:  # one line per problem (workflow validation)
        click.echo(f"tiler: error: {line}", err=True)
    sys.exit(code)
