"""The library entry point behind ``tiler inpaint``: plan a run (the run itself is ``run_upscale``,
which runs any plan)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import BadParameter, InputError
from .mask import MaskReader, MaskSpec, check_mask, touched_tiles
from .plan import MaskPlan, Plan, build_plan
from .raster import describe, parse_bands
from .tasks.superres import DiffusionOptions

log = logging.getLogger("tiler")

# Latent px, as for super-resolution (the CompVis inpainting model was trained at 64 and runs
# convolutionally on larger latents); the output chunk is 256 latent px = 1024 input px.
GRID_DEFAULTS = dict(tile=64, overlap=16, region=512, halo=32, chunk=256)


def default_output(input_path: Path, fmt: str | None) -> Path:
    from .upscale import OUTPUT_SUFFIX

    return input_path.with_name(f"{input_path.stem}_filled{OUTPUT_SUFFIX[fmt or 'GTiff']}")


def plan_inpaint(input_path, output_path=None, *, model: str, mask: MaskSpec, bands: str | None = None,
                 output_format: str | None = None, creation_overrides: dict[str, str] | None = None,
                 tile: int | None = None, overlap: int | None = None, region: int | None = None,
                 halo: int | None = None, chunk: int | None = None,
                 diffusion: DiffusionOptions | None = None) -> Plan:
    """Describe input and mask, check the model folder (no weights loaded), scan the mask for the
    tiles to compute, and work out the run."""
    from . import models
    from .export import creation_options, format_for
    from .model_card import read_card
    from .tasks.superres import sampling_spec
    from .upscale import _grid_sizes

    info = describe(input_path)
    band_list = parse_bands(bands, info)
    check_mask(mask, info, band_list)
    diffusion = diffusion or DiffusionOptions()
    model_dir = models.resolve_model_dir(model, allow_pickle=diffusion.allow_pickle)
    card = read_card(model_dir)
    if card.task != "inpaint":
        raise BadParameter("--model", f"{model} is a {card.task} model; expected an inpaint model")
    weights = models.check_weights(model_dir, ("unet", card.first_stage), allow_pickle=diffusion.allow_pickle)
    first_stage = models._read_json(model_dir / card.first_stage / "config.json")
    factor = 2 ** (len(first_stage["block_out_channels"]) - 1)
    if len(band_list) not in (1, first_stage["in_channels"]):
        raise BadParameter("-b/--bidx", f"{len(band_list)} bands selected; model {model} takes "
                           f"{first_stage['in_channels']} bands (or 1, repeated)")
    sizes = _grid_sizes(GRID_DEFAULTS, tile, overlap, region, halo)
    sizes["chunk"] = chunk or GRID_DEFAULTS["chunk"]
    spec = sampling_spec(model_dir, weights, first_stage["latent_channels"], info, band_list, diffusion)
    output = Path(output_path) if output_path else default_output(Path(input_path), output_format)
    fmt = format_for(output, output_format)
    plan = build_plan(info, model=model, scale=1, context=0, bands=band_list, output=output,
                      output_format=fmt, creation_options=creation_options(info.dtype, fmt, creation_overrides or {}),
                      diffusion=spec, task="inpaint", factor=factor,
                      mask=MaskPlan(source=mask.source, masked_px=0, tiles_touched=0), **sizes)
    return plan.model_copy(update={"mask": _scan(mask, info, band_list, plan)})


def _scan(mask: MaskSpec, info, bands, plan: Plan) -> MaskPlan:
    """Read the whole mask once: refuse an empty one, count the tiles each region will compute."""
    reader = MaskReader(mask, info, bands)
    grid = plan.tile_grid()
    try:
        coverage = touched_tiles(reader, grid, plan.factor, margin=plan.diffusion.decode_halo)
    finally:
        reader.close()
    where = mask.path or f"{info.path} ({mask.source}{f' {mask.band}' if mask.band else ''})"
    if coverage.masked_px == 0:
        raise InputError(f"{where}: the mask is empty: nothing to fill (the output would equal the "
                         "input); expected non-zero mask pixels")
    if coverage.masked_px == coverage.total_px:
        log.warning("the mask covers the whole raster: every pixel is generated from the model alone")
    stride = grid.stride
    computed = sum(1 for region in grid.regions() for tile in region.tiles
                   if (tile.y.start // stride, tile.x.start // stride) in coverage.tiles)
    identity = os.stat(mask.path) if mask.path else None
    return MaskPlan(source=mask.source, path=str(Path(mask.path).absolute()) if mask.path else None,
                    band=mask.band, dilate=mask.dilate,
                    size_bytes=identity.st_size if identity else -1,
                    mtime_ns=identity.st_mtime_ns if identity else -1,
                    masked_px=coverage.masked_px, tiles_touched=computed)
