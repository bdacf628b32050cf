"""``tiler train superres|inpaint``: train a small LDM on random windows of your rasters."""

import shlex
import sys

import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import apply, verbosity


def train_options(command):
    return apply(
        command,
        [
            click.argument("sources", metavar="RASTERS...", nargs=-1, required=True),
            click.option(
                "-o",
                "--output",
                required=True,
                type=click.Path(),
                help="The model folder to write.",
            ),
            click.option(
                "-b",
                "--bidx",
                "bands",
                metavar="LIST",
                help="Bands, 1-based (3 bands, or 1 repeated), e.g. 3,2,1. Default: all.",
            ),
            click.option(
                "--range",
                "value_range",
                metavar="MIN,MAX",
                help="Raster values mapped to [-1, 1] [uint8: 0,255; else each raster's 0.1/99.9 "
                "percentiles, as tiler upscale].",
            ),
            click.option(
                "--hold-out",
                "hold_out",
                multiple=True,
                metavar="LEFT,BOTTOM,RIGHT,TOP",
                help="An area never read (repeatable), in the rasters' CRS units (pixel "
                "col/row for rasters without georeferencing).",
            ),
            click.option(
                "--first-stage",
                type=click.Path(file_okay=False, exists=True),
                help="Reuse this model folder's VQ first stage (frozen) instead of training one.",
            ),
            click.option(
                "--size",
                type=click.Choice(["tiny", "small", "base"]),
                default="small",
                show_default=True,
                help="Model width: tiny (tests), small (CPU), base (GPU).",
            ),
            click.option("--steps", type=click.IntRange(min=1), help="UNet training steps."),
            click.option(
                "--first-stage-steps",
                type=click.IntRange(min=0),
                help="First-stage training steps [half of --steps].",
            ),
            click.option(
                "--minutes",
                type=click.FloatRange(min=0, min_open=True),
                help="Wall-time budget for both stages (instead of steps).",
            ),
            click.option(
                "--first-stage-share",
                type=click.FloatRange(0, 1, min_open=True, max_open=True),
                default=0.35,
                show_default=True,
                help="Share of --minutes for the first stage.",
            ),
            click.option(
                "--window",
                type=click.IntRange(min=8),
                default=64,
                show_default=True,
                help="UNet training window in latent px (f = 4 image px each).",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=16,
                show_default=True,
                help="UNet windows per step.",
            ),
            click.option(
                "--first-stage-window",
                type=click.IntRange(min=8),
                default=64,
                show_default=True,
                help="First-stage training window in image px.",
            ),
            click.option(
                "--first-stage-batch-size",
                type=click.IntRange(min=1),
                default=8,
                show_default=True,
                help="First-stage windows per step.",
            ),
            click.option(
                "--learning-rate",
                type=click.FloatRange(min=0, min_open=True),
                default=5e-4,
                show_default=True,
                help="AdamW learning rate (after a 100-step warm-up).",
            ),
            click.option(
                "--ema-decay",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.999,
                show_default=True,
                help="EMA decay of the exported weights.",
            ),
            click.option(
                "--prediction",
                type=click.Choice(["v_prediction", "epsilon"]),
                default="v_prediction",
                show_default=True,
                help="What the UNet predicts.",
            ),
            click.option(
                "--blur",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="superres: Gaussian blur (sigma, high-res px) before the 4 x 4 averaging.",
            ),
            click.option(
                "--lr-noise",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="superres: noise std added to the [-1, 1] low-res input.",
            ),
            click.option(
                "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."
            ),
            click.option(
                "--seed",
                type=int,
                default=0,
                show_default=True,
                help="Seed of the weights, windows and noise.",
            ),
            click.option(
                "--checkpoint-minutes",
                type=click.FloatRange(min=0, min_open=True),
                default=3.0,
                show_default=True,
                help="Minutes between checkpoints (OUTPUT.train/).",
            ),
            click.option(
                "--notice",
                "notices",
                multiple=True,
                help="A data or licence notice for the model card (repeatable).",
            ),
            click.option(
                "--overwrite",
                is_flag=True,
                help="Replace an existing OUTPUT model folder, or checkpoints of another run.",
            ),
        ],
    )


def _train(task: str, params: dict):
    from tiler.raster.values import parse_value_range
    from tiler.train import TrainOptions, train
    from tiler.train.data import parse_hold_out

    quiet = params.pop("quiet")
    params.pop("verbose")
    params["value_range"] = (
        parse_value_range(params["value_range"]) if params["value_range"] else None
    )
    params["hold_out"] = tuple(parse_hold_out(text) for text in params["hold_out"])
    params["sources"] = tuple(params["sources"])
    command = "tiler " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    options = TrainOptions(task=task, command=command, **params)
    written = train(options, progress=not quiet)
    if not quiet:
        click.echo(f"tiler: wrote the model folder {written}", err=True)


@click.group("train")
def train_command():
    """Train a small LDM (first stage, then latent UNet) on random windows of rasters."""


@train_command.command("superres")
@train_options
@verbosity
@reports_errors
def train_superres(**params):
    """4x super-resolution: the low-resolution input is each window averaged over 4 x 4 blocks.
    RASTERS are files or folders of rasters; the result loads with tiler upscale --model."""
    _train("superres", params)


@train_command.command("inpaint")
@train_options
@verbosity
@reports_errors
def train_inpaint(**params):
    """Inpainting with random cloud-like masks and gaps. RASTERS are files or folders of rasters;
    the result loads with tiler inpaint --model."""
    _train("inpaint", params)
