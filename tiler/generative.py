"""Planning shared by the tasks whose models come in tiler's model-directory format (inpaint,
synthesize): their latent grid is the input grid divided by the first stage's factor, the output
grid is the input's."""

from __future__ import annotations

from pathlib import Path

from .errors import BadParameter
from .model_card import ModelFolder
from .plan import Plan, build_plan
from .raster import RasterInfo
from .tasks.superres import DiffusionOptions

# Latent px (the CompVis inpainting and synthesis models were trained at 64 and 128 and run
# convolutionally on larger latents); the output chunk is 256 latent px = 1024 input px. Regions of
# 1024 latent px cover the same output area as super-resolution's: on a 20000 px raster they
# denoise 2.09x the raster's area in tiles against 2.56x for regions of 512, with the same balance
# on 8 GPUs (benchmarks/region_size.py); the encoder and decoder work in windows whatever the region.
GRID_DEFAULTS = dict(tile=64, overlap=16, region=1024, halo=32, chunk=256)


def plan_generative(info: RasterInfo, bands: tuple[int, ...], folder: ModelFolder, *, model: str,
                    task: str, output: Path, output_format: str | None,
                    creation_overrides: dict[str, str] | None, grid: dict[str, int | None],
                    diffusion: DiffusionOptions, **extra) -> Plan:
    """The plan of ``task`` on ``info`` with the model in ``folder``; ``grid`` the user's tile,
    overlap, region and halo (None = default); ``extra``: the task's own plan fields."""
    from .export import creation_options, format_for
    from .tasks.superres import sampling_spec
    from .upscale import _grid_sizes

    if diffusion.back_project:
        raise BadParameter("--back-project", f"{task} has no low-resolution input to agree "
                           "with; only super-resolution (tiler upscale) back-projects")
    sizes = _grid_sizes(GRID_DEFAULTS, **grid)
    sizes["chunk"] = GRID_DEFAULTS["chunk"]
    if sizes["tile"] % folder.tile_multiple:
        raise BadParameter("--tile", f"{sizes['tile']} is not a multiple of {folder.tile_multiple}, "
                           f"which the UNet of {model} needs")
    spec = sampling_spec(folder.path, folder.weights, folder.first_stage["latent_channels"], info,
                         bands, diffusion)
    fmt = format_for(output, output_format)
    return build_plan(info, model=model, scale=1, context=0, bands=bands, output=output,
                      output_format=fmt,
                      creation_options=creation_options(info.dtype, fmt, creation_overrides or {}),
                      diffusion=spec, task=task, factor=folder.factor, **sizes, **extra)
