"""The library entry point behind ``tiler inpaint``: plan a run (the run itself is ``run_upscale``,
which runs any plan)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import BadParameter, InputError
from .mask import MaskReader, MaskSpec, check_mask, touched_tiles
from .plan import MaskPlan, Plan
from .raster import describe, parse_bands
from .tasks.superres import DiffusionOptions

log = logging.getLogger("tiler")


def default_output(input_path: Path, fmt: str | None) -> Path:
    from .upscale import OUTPUT_SUFFIX

    return input_path.with_name(f"{input_path.stem}_filled{OUTPUT_SUFFIX[fmt or 'GTiff']}")


def plan_inpaint(input_path, output_path=None, *, model: str, mask: MaskSpec, bands: str | None = None,
                 output_format: str | None = None, creation_overrides: dict[str, str] | None = None,
                 tile: int | None = None, overlap: int | None = None, region: int | None = None,
                 halo: int | None = None,
                 diffusion: DiffusionOptions | None = None) -> Plan:
    """Describe input and mask, check the model folder (no weights loaded), scan the mask for the
    tiles to compute, and work out the run."""
    from .generative import plan_generative
    from .model_card import inspect_model

    info = describe(input_path)
    band_list = parse_bands(bands, info)
    check_mask(mask, info, band_list)
    diffusion = diffusion or DiffusionOptions()
    folder = inspect_model(model, "inpaint", allow_pickle=diffusion.allow_pickle)
    channels = folder.first_stage["in_channels"]
    if len(band_list) not in (1, channels):
        raise BadParameter("-b/--bidx", f"{len(band_list)} bands selected; model {model} takes "
                           f"{channels} bands (or 1, repeated)")
    output = Path(output_path) if output_path else default_output(Path(input_path), output_format)
    plan = plan_generative(info, band_list, folder, model=model, task="inpaint", output=output,
                           output_format=output_format, creation_overrides=creation_overrides,
                           grid=dict(tile=tile, overlap=overlap, region=region, halo=halo),
                           diffusion=diffusion,
                           mask=MaskPlan(source=mask.source, masked_px=0, tiles_touched=0))
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
