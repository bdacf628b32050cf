"""Options shared by the commands: each a click decorator, defaults shown from the library's."""

from __future__ import annotations

import os

import click

from tiler.cli.errors import reports_errors
from tiler.ldm.folders import DEFAULT_SR_MODEL


class RasterPath(click.ParamType):
    """A raster GDAL opens: a local file or Zarr store (which must exist), a URL or a GDAL
    virtual file system path (checked when opened, as click cannot stat it)."""

    name = "path"

    def convert(self, value, param, ctx):
        from tiler.raster.sources import is_virtual

        text = str(value)
        if is_virtual(text):
            return text
        if not os.path.exists(text):
            self.fail(f"Path {text!r} does not exist.", param, ctx)
        if os.path.isdir(text) and not os.path.isdir(os.path.join(text, "data")):
            self.fail(
                f"{text!r} is a directory, not a raster (or a tiler Zarr output).", param, ctx
            )
        return text


RASTER = RasterPath()


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
        click.option(
            "-b",
            "--bidx",
            "bands",
            metavar="LIST",
            help="Bands to process, 1-based, comma-separated (e.g. 3,2,1). Default: all.",
        ),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["GTiff", "COG", "Zarr"]),
            help="Output format. Default: from OUTPUT's extension (.tif, .zarr).",
        ),
        click.option(
            "--co",
            "creation_options",
            multiple=True,
            metavar="NAME=VALUE",
            callback=parse_creation_options,
            help="Driver creation option (repeatable), e.g. --co COMPRESS=ZSTD.",
        ),
    ]


def run_options(command):
    """The workdir and what may be replaced (every command that writes an output)."""
    return apply(
        command,
        [
            click.option(
                "--workdir",
                type=click.Path(file_okay=False),
                help="Zarr workdir for intermediate arrays and resume state [OUTPUT.tiler].",
            ),
            click.option("--keep-workdir", is_flag=True, help="Keep the workdir after success."),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Replace an existing OUTPUT or a workdir of another plan.",
            ),
        ],
    )


def upscale_arguments(command):
    """INPUT [OUTPUT] and the options that shape the plan (shared by upscale and plan)."""
    return apply(
        command,
        [
            click.argument("input_path", metavar="INPUT", type=RASTER),
            click.argument("output_path", metavar="[OUTPUT]", required=False, type=click.Path()),
            click.option(
                "--model",
                default=DEFAULT_SR_MODEL,
                show_default=True,
                help="LDM super-resolution model (hub id or local diffusers folder: an "
                "LDMSuperResolutionPipeline or the text-conditioned "
                "StableDiffusionUpscalePipeline), or a classical model: nearest, bicubic, lanczos.",
            ),
            click.option(
                "--scale",
                type=int,
                help="Upscaling factor (classical models; default 4). LDM models fix their own.",
            ),
            *output_options(),
            *ldm_options("LDM: ", None, "VQ decode halo in latent px", ranged=True),
            back_project_option(),
            *text_options("x4 upscaler: ", "9"),
            click.option(
                "--noise-level",
                type=int,
                help="x4 upscaler: noise added to the low-res conditioning, 0 to the model's "
                "max_noise_level (350); more lets the model invent more detail [20].",
            ),
        ],
    )


def text_options(prefix: str, guidance: str) -> list:
    """Prompts and classifier-free guidance of text-conditioned models (Stable Diffusion
    pipelines); other models refuse them."""
    return [
        click.option("--prompt", help=f"{prefix}what the output should show [empty]."),
        click.option(
            "--negative-prompt", help=f"{prefix}what it should not show (with guidance) [empty]."
        ),
        click.option(
            "--guidance-scale",
            type=float,
            help=f"{prefix}classifier-free guidance scale; 1 turns guidance off and halves the "
            f"UNet work [{guidance}].",
        ),
    ]


def back_project_option():
    """Super-resolution's consistency with its input (tiler/geometry/back_projection.py)."""
    from tiler.geometry.back_projection import ENABLED_BY_DEFAULT

    return click.option(
        "--back-project/--no-back-project",
        default=ENABLED_BY_DEFAULT,
        help="LDM: correct the output so that the mean of every f x f block equals the input px "
        "under it, the correction spread smoothly (iterative back-projection) "
        f"[{'on' if ENABLED_BY_DEFAULT else 'off'}].",
    )


def ldm_options(prefix: str, grid: dict | None, decode_halo: str, ranged: bool) -> list:
    """The grid and sampling options of the LDM commands; ``prefix`` marks them in a command that
    also runs classical models, ``grid`` holds the grid defaults (None: the model's), ``ranged``
    adds --range."""
    from tiler.ldm.options import DEFAULTS

    def default(key: str) -> str:
        return str(grid[key]) if grid else "model default"

    options = [
        click.option("--tile", type=int, help=f"Tile size in latent px [{default('tile')}]."),
        click.option(
            "--overlap", type=int, help=f"Tile overlap in latent px [{default('overlap')}]."
        ),
        click.option(
            "--region",
            type=int,
            help=f"Region (unit of work) size in latent px [{default('region')}].",
        ),
        click.option(
            "--halo", type=int, help=f"Extra latent px around each region [{default('halo')}]."
        ),
        click.option("--steps", type=int, help=f"{prefix}Denoising steps [{DEFAULTS['steps']}]."),
        click.option(
            "--eta", type=float, help=f"{prefix}DDIM eta, 0 = deterministic [{DEFAULTS['eta']:g}]."
        ),
        click.option(
            "--seed", type=int, help=f"{prefix}Seed of the keyed noise [{DEFAULTS['seed']}]."
        ),
        click.option(
            "--sampler",
            help=f"{prefix}ddim, dpm++, dpm++-sde, euler, heun, lms, pndm, "
            f"unipc or a diffusers scheduler class name [{DEFAULTS['sampler']}].",
        ),
        click.option(
            "--device", default="auto", show_default=True, help=f"{prefix}auto, cpu, cuda, cuda:N."
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "float16", "bfloat16"]),
            help=f"{prefix}float32 on CPU, bfloat16 on CUDA by default.",
        ),
        click.option(
            "--decode-tile",
            type=int,
            help=f"{prefix}VQ decode tile in latent px [{DEFAULTS['decode_tile']}].",
        ),
        click.option(
            "--decode-halo", type=int, help=f"{prefix}{decode_halo} [{DEFAULTS['decode_halo']}]."
        ),
        click.option(
            "--decode-norm",
            type=click.Choice(["auto", "window", "shared"]),
            help=f"{prefix}GroupNorm statistics of the VQ windows: one set measured once "
            "and shared by every window (shared; auto), or each window's own "
            "(window) [auto].",
        ),
        click.option(
            "--allow-pickle",
            is_flag=True,
            help=f"{prefix}Allow pickle (.bin) weights, which can run code when loaded.",
        ),
    ]
    if ranged:
        options.insert(
            10,
            click.option(
                "--range",
                "value_range",
                metavar="MIN,MAX",
                help=f"{prefix}Raster values mapped to the model's [-1, 1] [uint8: 0,255; "
                "else 0.1/99.9 percentiles of the whole raster].",
            ),
        )
    return options


def batch_size_option(prefix: str):
    from tiler.ldm.options import BATCH_SIZES

    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        help=f"{prefix}Tiles per UNet call [{BATCH_SIZES['cuda']} on CUDA, "
        f"{BATCH_SIZES['cpu']} on CPU]; never changes the result.",
    )


def threads_option(prefix: str):
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        help=f"{prefix}torch threads per model worker on a CPU [OMP_NUM_THREADS if set, else the "
        "cores divided by the workers].",
    )


def model_run_options(command):
    """How a model runs, never what it computes (the generative commands; upscale has its own)."""
    return apply(
        command,
        [
            batch_size_option(""),
            threads_option(""),
            click.option("--compile", is_flag=True, help="torch.compile the UNet and VQ."),
        ],
    )


def generative_options(output: list, decode_halo: str, ranged: bool, text: list = ()):
    """Every option of a command on tiler's model-directory format (inpaint, synthesize) after its
    own: ``output`` (how the output is written), the grid and sampling options, ``text`` (the
    prompt options where text-conditioned models serve the command), how the model runs, the run,
    where it runs, --dry-run, verbosity; errors reported as one line."""
    from tiler.tasks.ldm import LATENT_GRID_DEFAULTS as GRID_DEFAULTS

    def decorate(command):
        grid_and_sampling = ldm_options("", GRID_DEFAULTS, decode_halo, ranged)
        command = apply(command, output + grid_and_sampling + list(text))
        for decorator in (
            model_run_options,
            run_options,
            execution_options,
            dry_run_options,
            verbosity,
        ):
            command = decorator(command)
        return reports_errors(command)

    return decorate


def dry_run_options(command):
    return apply(
        command,
        [
            click.option("--dry-run", is_flag=True, help="Print the plan and exit."),
            click.option(
                "--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON."
            ),
        ],
    )


def execution_options(command):
    """Where to run; unset options come from the ``tiler`` section of Dask's config files."""
    from tiler.execution.cluster import CLUSTER_KINDS

    decorators = [
        click.option(
            "--cluster",
            type=click.Choice(CLUSTER_KINDS),
            help="threads: this process; local: Dask worker processes here (one per GPU, "
            "or --workers CPU workers); slurm, pbs, kubernetes: Dask clusters "
            "configured in Dask's config files [auto: local with 2+ GPUs, else threads].",
        ),
        click.option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run on the running Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786).",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            help="threads: worker threads [classical: all cores; LDM: 2 per GPU, or all "
            "cores]; local: CPU worker processes [all cores]; slurm/pbs: jobs; "
            "kubernetes: pods [1].",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            help="Dask: extra attempts of a failing unit before the run stops [2].",
        ),
    ]
    return apply(command, decorators)


def verbosity(command):
    command = click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")(
        command
    )
    return click.option("-v", "--verbose", is_flag=True, help="Log details; tracebacks on errors.")(
        command
    )
