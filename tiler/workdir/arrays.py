"""Engine pieces shared by the tasks: the arrays of a workdir and the unit operations on them.

Every unit of every stage is indexed (iy, ix) on its stage's grid (regions, or output chunks) and
writes exactly one chunk:
- a region's result over its extent goes to its own block of ``regions`` (``write_extent``), cut
  into Zarr chunks that line up with the output chunk grid, so that assembling one output chunk
  reads only the stored pieces over it, not whole regions;
- a core-aligned result (assembled regions, decoded pixels, or a halo-free region) goes to the
  chunk of its core in a grid-shaped array (``write_core``).
``blend_regions`` blends the stored extents touching a core with partition-of-unity region weights.
"""

from __future__ import annotations

import numpy as np

from tiler.geometry.blend import Blender
from tiler.geometry.grid import Box, TileGrid
from tiler.geometry.weights import region_profile
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir


def output_specs(plan: Plan) -> dict[str, dict]:
    """The ``output`` array: the final pixels, one chunk per ``plan.grid.chunk`` block of the
    latent grid (f x scale output px per latent px)."""
    out, chunk = plan.output, plan.grid.chunk * plan.factor * plan.scale
    return {
        "output": dict(
            shape=(out.count, out.height, out.width),
            chunks=(out.count, min(chunk, out.height), min(chunk, out.width)),
            dtype=out.dtype,
            fill_value=plan.output_fill,
        )
    }


def regions_spec(plan: Plan, channels: int, scale: int) -> dict[str, dict]:
    """The ``regions`` array: each region's extent (core + halo, ``scale`` px per latent px) in a
    block of its own, ``regions[ry, rx]``, NaN = no data. The block starts at the output chunk line
    at or before the extent (``_block_origin``) and is chunked like the output, so every Zarr chunk
    has one writer (its region) and an output chunk's assembly reads one chunk per region."""
    ny, nx = plan.tile_grid().region_shape
    chunk = plan.grid.chunk * scale
    extent = (plan.grid.region + 2 * plan.grid.halo) * scale
    side = -(-(extent + chunk - 1) // chunk) * chunk  # the extent at any phase against the chunks
    return {
        "regions": dict(
            shape=(ny, nx, channels, side, side),
            chunks=(1, 1, channels, chunk, chunk),
            dtype="float32",
            fill_value=float("nan"),
        )
    }


def _block_origin(extent: Box, chunk: int) -> tuple[int, int]:
    """Where a region's block starts (y, x), in the array's px: the chunk line at or before its
    ``extent`` (scaled)."""
    return (extent.y.start // chunk * chunk, extent.x.start // chunk * chunk)


def _region_extent(grid: TileGrid, index: tuple[int, int], scale: int) -> Box:
    return Box(grid.rows.region_extent(index[0]), grid.cols.region_extent(index[1])).scale(scale)


def done_specs(unit_shapes: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """One ``done/<stage>`` flag array per stage (shape: the stage's unit grid), one chunk (one
    writer) per unit, under the chunk keys ``c/<row>/<col>`` that ``Workdir.pending`` lists."""
    return {
        f"done/{stage}": dict(
            shape=shape,
            chunks=(1, 1),
            dtype="uint8",
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "/"},
        )
        for stage, shape in unit_shapes.items()
    }


def write_core(workdir: Workdir, name: str, box: Box, values: np.ndarray):
    """Write ``values`` over ``box`` (one chunk, in the array's own px) of array ``name``."""
    with workdir.writing():
        workdir.array(name)[:, box.y.start : box.y.stop, box.x.start : box.x.stop] = values


def write_extent(
    workdir: Workdir, grid: TileGrid, index: tuple[int, int], values: np.ndarray, scale: int = 1
):
    """Store region ``index``'s extent (C, h, w at ``scale`` px per latent px; NaN = no data) in its
    block of ``regions``. The block's chunks belong to this region alone; Zarr fills the parts of
    its edge chunks outside the extent with NaN."""
    regions = workdir.array("regions")
    extent = _region_extent(grid, index, scale)
    oy, ox = _block_origin(extent, regions.chunks[-1])
    with workdir.writing():
        regions[
            index[0],
            index[1],
            :,
            extent.y.start - oy : extent.y.stop - oy,
            extent.x.start - ox : extent.x.stop - ox,
        ] = values


def blend_regions(
    workdir: Workdir, grid: TileGrid, core: Box, scale: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the stored extents of the regions touching ``core``; values and validity over
    ``core`` scaled by ``scale``."""
    target = core.scale(scale)
    height, width, halo = grid.height * scale, grid.width * scale, grid.halo * scale
    blender = Blender(target, channels)
    stored = workdir.array("regions")
    chunk = stored.chunks[-1]
    for ry in grid.rows.regions_touching(core.y):
        for rx in grid.cols.regions_touching(core.x):
            extent = _region_extent(grid, (ry, rx), scale)
            inner = extent.intersection(target)
            if inner is None:
                continue
            oy, ox = _block_origin(extent, chunk)
            values = stored[
                ry,
                rx,
                :,
                inner.y.start - oy : inner.y.stop - oy,
                inner.x.start - ox : inner.x.stop - ox,
            ]
            rows, cols = inner.relative_to(extent)
            weights = np.outer(
                region_profile(extent.y.start, extent.y.stop, height, halo)[rows],
                region_profile(extent.x.start, extent.x.stop, width, halo)[cols],
            )
            blender.add(inner, values, ~np.isnan(values), weights)
    return blender.result(target)
