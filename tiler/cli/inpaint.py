import click

from tiler.cli.options import RASTER, generative_options, output_options, text_options
from tiler.cli.running import diffusion_options, run_or_print


@click.command("inpaint")
@click.argument("input_path", metavar="INPUT", type=RASTER)
@click.argument("output_path", metavar="[OUTPUT]", required=False, type=click.Path())
@click.option(
    "--model",
    required=True,
    help="Inpainting model: a folder in tiler's format (tiler.yaml; see `tiler convert`), or a "
    "Stable Diffusion inpainting pipeline (hub id or diffusers folder).",
)
@click.option(
    "--mask",
    "mask_path",
    type=RASTER,
    help="Raster of the area to fill (non-zero), aligned with INPUT or in its CRS covering it.",
)
@click.option(
    "--mask-nodata", is_flag=True, help="Fill INPUT's missing pixels (nodata, NaN, alpha)."
)
@click.option("--mask-band", type=int, help="Fill where band N of INPUT is non-zero.")
@click.option(
    "--dilate", type=int, default=0, show_default=True, help="Grow the mask by PX pixels."
)
@generative_options(
    output_options(),
    "VQ decode halo in latent px, also the margin of denoised latent px around the mask",
    ranged=True,
    text=text_options("Stable Diffusion inpainting: ", "7.5"),
)
def inpaint_command(mask_path, mask_nodata, mask_band, dilate, verbose, **params):
    """Fill the masked area of INPUT into OUTPUT [INPUT-STEM_filled.tif]; every other pixel is
    copied bit for bit. Only tiles near the mask are computed; re-running resumes."""
    from tiler.raster.mask import choose_mask
    from tiler.tasks.inpaint import plan_inpaint

    flags = ("--mask", "--mask-nodata", "--mask-band")
    mask = choose_mask(mask_path, mask_nodata, mask_band, dilate, flags)
    plan = plan_inpaint(
        params["input_path"],
        params["output_path"],
        model=params["model"],
        mask=mask,
        bands=params["bands"],
        output_format=params["output_format"],
        creation_overrides=params["creation_options"],
        **{key: params[key] for key in ("tile", "overlap", "region", "halo")},
        diffusion=diffusion_options(params),
    )
    run_or_print(plan, params)
