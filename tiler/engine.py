"""The stages of a run, each resuming from what the workdir holds:

process   per region: tiles -> blended output over the region's extent. Without halo the extent is
          the core and goes straight into its own chunk of ``output``; with halo it goes to the
          region's chunk of ``regions``.
assemble  (halo only) per output chunk: the regions touching it, blended with region weights.
export    ``output`` -> the final file (see export.py).
"""

from __future__ import annotations

import numpy as np

from .blend import Blender
from .grid import Box
from .raster import to_pixels
from .store import Workdir
from .weights import region_profile


def write_region(workdir: Workdir, region, values: np.ndarray, valid: np.ndarray):
    """Store a region's result in its own chunk, then mark the region done."""
    plan = workdir.plan
    scale = plan.scale
    iy, ix = region.index
    if plan.grid.halo == 0:
        core = region.core.scale(scale)
        pixels = to_pixels(values, valid, plan.output.dtype, plan.output_fill)
        with workdir.writing():
            workdir.array("output")[:, core.y.start:core.y.stop, core.x.start:core.x.stop] = pixels
    else:
        regions = workdir.array("regions")
        chunk = np.full(regions.chunks[2:], np.nan, dtype=np.float32)
        h, w = values.shape[1:]
        chunk[:, :h, :w] = np.where(valid, values, np.nan)
        with workdir.writing():
            regions[iy, ix] = chunk
    workdir.mark_done("process", region.index)


def assemble_chunk(workdir: Workdir, index: tuple[int, int]):
    """Blend the regions that touch output chunk ``index`` and write the chunk."""
    plan = workdir.plan
    grid, scale, halo = plan.tile_grid(), plan.scale, plan.grid.halo
    core = grid.region_at(*index).core
    target = core.scale(scale)
    blender = Blender(target, plan.output.count)
    stored = workdir.array("regions")
    for ry in grid.rows.regions_touching(core.y):
        for rx in grid.cols.regions_touching(core.x):
            extent = Box(grid.rows.region_extent(ry), grid.cols.region_extent(rx)).scale(scale)
            values = stored[ry, rx, :, :extent.y.size, :extent.x.size]
            weights = np.outer(
                region_profile(extent.y.start, extent.y.stop, plan.output.height, halo * scale),
                region_profile(extent.x.start, extent.x.stop, plan.output.width, halo * scale))
            blender.add(extent, values, ~np.isnan(values), weights)
    values, valid = blender.result(target)
    pixels = to_pixels(values, valid, plan.output.dtype, plan.output_fill)
    with workdir.writing():
        workdir.array("output")[:, target.y.start:target.y.stop, target.x.start:target.x.stop] = pixels
    workdir.mark_done("assemble", index)
