"""``tiler convert``: a CompVis latent-diffusion checkpoint -> a tiler model folder."""

import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import verbosity


@click.command("convert")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The checkpoint's CompVis config.yaml [config.yaml beside CKPT].",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing OUT_DIR (a tiler model folder)."
)
@click.option(
    "--ema/--no-ema",
    "use_ema",
    default=True,
    show_default=True,
    help="Convert the EMA weights (what CompVis samples with) when the checkpoint has them.",
)
@verbosity
@reports_errors
def convert_command(ckpt, out_dir, config_path, overwrite, use_ema, verbose, quiet):
    """Convert a CompVis latent-diffusion checkpoint CKPT (inpainting or semantic synthesis; read
    without running pickled code) into the tiler model folder OUT_DIR."""
    from tiler.convert import convert_checkpoint
    from tiler.ldm.card import read_card

    written = convert_checkpoint(
        ckpt, out_dir, config_path=config_path, overwrite=overwrite, use_ema=use_ema
    )
    if not quiet:
        card = read_card(written)
        click.echo(f"tiler: converted {ckpt} ({card.task}) into {written}", err=True)
