"""Engine pieces shared by the tasks: the arrays of a workdir and the unit operations on them.

Every unit of every stage is indexed (iy, ix) on its stage's grid (regions, or output chunks) and
writes exactly one chunk:
- a region's result over its extent goes to its own chunk of ``regions`` (``write_extent``);
- a core-aligned result (assembled regions, decoded pixels, or a halo-free region) goes to the
  chunk of its core in a grid-shaped array (``write_core``).
``blend_regions`` blends the stored extents touching a core with partition-of-unity region weights.
"""

from __future__ import annotations

import numpy as np

from .blend import Blender
from .grid import Box, TileGrid
from .plan import Plan
from .store import Workdir
from .weights import region_profile


def output_specs(plan: Plan) -> dict[str, dict]:
    """The ``output`` array: the final pixels, one chunk per ``plan.grid.chunk`` block."""
    out, chunk = plan.output, plan.grid.chunk * plan.scale
    return {"output": dict(shape=(out.count, out.height, out.width),
                           chunks=(out.count, min(chunk, out.height), min(chunk, out.width)),
                           dtype=out.dtype, fill_value=plan.output_fill)}


def regions_spec(plan: Plan, channels: int, scale: int) -> dict[str, dict]:
    """The ``regions`` array: each region's extent (core + halo, ``scale`` px per latent px),
    stored top-left in a chunk of its own; NaN = no data."""
    ny, nx = plan.tile_grid().region_shape
    side = (plan.grid.region + 2 * plan.grid.halo) * scale
    return {"regions": dict(shape=(ny, nx, channels, side, side), chunks=(1, 1, channels, side, side),
                            dtype="float32", fill_value=float("nan"))}


def done_specs(unit_shapes: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """One ``done/<stage>`` flag array per stage (shape: the stage's unit grid), one chunk (one
    writer) per unit."""
    return {f"done/{stage}": dict(shape=shape, chunks=(1, 1), dtype="uint8", fill_value=0)
            for stage, shape in unit_shapes.items()}


def write_core(workdir: Workdir, name: str, box: Box, values: np.ndarray):
    """Write ``values`` over ``box`` (one chunk, in the array's own px) of array ``name``."""
    with workdir.writing():
        workdir.array(name)[:, box.y.start:box.y.stop, box.x.start:box.x.stop] = values


def write_extent(workdir: Workdir, index: tuple[int, int], values: np.ndarray):
    """Store a region's extent (C, h, w; NaN = no data) in the region's chunk of ``regions``."""
    regions = workdir.array("regions")
    chunk = np.full(regions.chunks[2:], np.nan, dtype=np.float32)
    chunk[:, :values.shape[1], :values.shape[2]] = values
    with workdir.writing():
        regions[index[0], index[1]] = chunk


def blend_regions(workdir: Workdir, grid: TileGrid, core: Box, scale: int, channels: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Blend the stored extents of the regions touching ``core``; values and validity over
    ``core`` scaled by ``scale``."""
    target = core.scale(scale)
    height, width, halo = grid.height * scale, grid.width * scale, grid.halo * scale
    blender = Blender(target, channels)
    stored = workdir.array("regions")
    for ry in grid.rows.regions_touching(core.y):
        for rx in grid.cols.regions_touching(core.x):
            extent = Box(grid.rows.region_extent(ry), grid.cols.region_extent(rx)).scale(scale)
            values = stored[ry, rx, :, :extent.y.size, :extent.x.size]
            weights = np.outer(region_profile(extent.y.start, extent.y.stop, height, halo),
                               region_profile(extent.x.start, extent.x.stop, width, halo))
            blender.add(extent, values, ~np.isnan(values), weights)
    return blender.result(target)
