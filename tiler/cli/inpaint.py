import click

from .options import (apply, execution_options, output_options, reports_errors, run_and_report,
                      run_options, verbosity)
from .plan import print_plan


def sampling_options(command):
    """LDM options shared by the generative commands (inpaint; upscale has its own help texts)."""
    return apply(command, [
        click.option("--tile", type=int, help="Tile size in latent px [64]."),
        click.option("--overlap", type=int, help="Tile overlap in latent px [16]."),
        click.option("--region", type=int, help="Region (unit of work) size in latent px [512]."),
        click.option("--halo", type=int, help="Extra latent px around each region [32]."),
        click.option("--steps", type=int, help="Denoising steps [50]."),
        click.option("--eta", type=float, help="DDIM eta, 0 = deterministic [0]."),
        click.option("--seed", type=int, help="Seed of the keyed noise [0]."),
        click.option("--sampler", help="ddim, dpm++, dpm++-sde, euler, heun, lms, pndm, unipc [ddim]."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                     help="float32 on CPU, bfloat16 on CUDA by default."),
        click.option("--range", "value_range", metavar="MIN,MAX",
                     help="Raster values mapped to [-1, 1] [uint8: 0,255; else 0.1/99.9 percentiles]."),
        click.option("--decode-tile", type=int, help="VQ decode tile in latent px [128]."),
        click.option("--decode-halo", type=int,
                     help="VQ decode halo in latent px, also the margin of denoised latent px "
                          "around the mask [16]."),
        click.option("--allow-pickle", is_flag=True,
                     help="Allow pickle (.bin) weights, which can run code when loaded."),
        click.option("--batch-size", type=click.IntRange(min=1),
                     help="Tiles per UNet call [16 on CUDA, 4 on CPU]; never changes the result."),
        click.option("--compile", "compile_model", is_flag=True, help="torch.compile the UNet and VQ."),
    ])


@click.command("inpaint")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, exists=True))
@click.argument("output_path", metavar="[OUTPUT]", required=False, type=click.Path())
@click.option("--model", required=True,
              help="Inpainting model folder in tiler's format (tiler.yaml; see `tiler convert`).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, exists=True),
              help="Raster of the area to fill (non-zero), aligned with INPUT or in its CRS covering it.")
@click.option("--mask-nodata", is_flag=True, help="Fill INPUT's missing pixels (nodata, NaN, alpha).")
@click.option("--mask-band", type=int, help="Fill where band N of INPUT is non-zero.")
@click.option("--dilate", type=int, default=0, show_default=True, help="Grow the mask by PX pixels.")
@lambda command: apply(command, output_options())
@sampling_options
@run_options
@execution_options
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@verbosity
@reports_errors
def inpaint_command(input_path, output_path, model, mask_path, mask_nodata, mask_band, dilate,
                    workdir, keep_workdir, overwrite, cluster, scheduler, workers, retries,
                    batch_size, compile_model, dry_run, as_json, verbose, quiet, **params):
    """Fill the masked area of INPUT into OUTPUT [INPUT-STEM_filled.tif]; every other pixel is
    copied bit for bit. Only tiles near the mask are computed; re-running resumes."""
    from ..errors import BadParameter
    from ..inpaint import plan_inpaint
    from ..mask import MaskSpec
    from ..tasks.superres import DiffusionOptions

    given = [name for name, value in (("--mask", mask_path), ("--mask-nodata", mask_nodata),
                                      ("--mask-band", mask_band)) if value]
    if len(given) != 1:
        raise BadParameter("--mask", f"{' and '.join(given) or 'none'} given; expected exactly one of "
                           "--mask FILE, --mask-nodata, --mask-band N")
    source = {"--mask": "file", "--mask-nodata": "nodata", "--mask-band": "band"}[given[0]]
    mask = MaskSpec(source, mask_path, mask_band, dilate)
    diffusion = DiffusionOptions(**{key: params[key] for key in (
        "steps", "eta", "seed", "sampler", "device", "dtype", "value_range", "decode_tile",
        "decode_halo", "allow_pickle")})
    plan = plan_inpaint(input_path, output_path, model=model, mask=mask, bands=params["bands"],
                        output_format=params["output_format"],
                        creation_overrides=params["creation_options"],
                        **{key: params[key] for key in ("tile", "overlap", "region", "halo")},
                        diffusion=diffusion)
    if dry_run:
        print_plan(plan, as_json)
        return
    run_and_report(plan, workdir=workdir, overwrite=overwrite, keep_workdir=keep_workdir,
                   cluster=cluster, scheduler=scheduler, workers=workers, retries=retries,
                   batch_size=batch_size, compile_model=compile_model, device=params["device"],
                   allow_pickle=params["allow_pickle"], quiet=quiet)
