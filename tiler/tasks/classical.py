"""Upscaling with a classical kernel (``tiler upscale --model nearest|bicubic|lanczos``, and the
1x copy behind ``tiler export``): every tile of a region is read with its context, resampled, and
blended onto the region's extent in output pixels.

Stages: ``process`` (per region); with a halo, also ``assemble`` (per output chunk: blend the
regions touching it). Without halo a region's core is final and goes straight to ``output``.
"""

from __future__ import annotations

import numpy as np

from tiler.errors import BadParameter
from tiler.geometry.blend import Blender
from tiler.geometry.grid import Region
from tiler.geometry.resample import ClassicalUpscaler
from tiler.geometry.weights import tile_weights
from tiler.raster.sources import RasterInfo, SourceReader, describe, parse_bands
from tiler.raster.values import to_pixels, valid_mask
from tiler.tasks.base import Task
from tiler.tasks.memory import check_memory
from tiler.tasks.planning import grid_sizes, plan_with_output
from tiler.workdir import arrays
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir

# Classical kernels are exact per tile (context reads), so tiles need no overlap and regions no
# halo; the sizes only trade per-tile overhead against the cost of the resampling matmuls.
GRID_DEFAULTS = dict(tile=128, overlap=0, region=256, halo=0)  # chunk = region
# A copy needs no overlap or halo; large regions keep the unit count low (a 50,000 px square raster
# is 2,500 regions) and match the output's 512 px blocks.
EXPORT_GRID = dict(tile=512, overlap=0, region=1024, halo=0)


def plan_classical(
    info: RasterInfo,
    input_path,
    output_path,
    *,
    kernel: str,
    bands: tuple[int, ...],
    scale: int | None,
    output_format: str | None,
    creation_overrides: dict[str, str] | None,
    grid: dict[str, int | None],
) -> Plan:
    """The plan of a ``kernel`` upscale by ``scale`` (default 4); ``grid``: the user's tile,
    overlap, region and halo (None = default)."""
    scale = 4 if scale is None else scale
    if scale < 1:
        raise BadParameter("scale", f"{scale}: expected an upscaling factor >= 1")
    context = ClassicalUpscaler(kernel, scale).context
    sizes = grid_sizes(GRID_DEFAULTS, **grid)
    sizes["chunk"] = sizes["region"]  # a halo-free region writes its core as one output chunk
    plan = plan_with_output(
        info,
        input_path,
        output_path,
        tag=f"x{scale}",
        output_format=output_format,
        creation_overrides=creation_overrides,
        model=kernel,
        scale=scale,
        context=context,
        bands=bands,
        **sizes,
    )
    check_memory(plan)
    return plan


def plan_export(
    input_path,
    output_path,
    *,
    bands: str | None = None,
    output_format: str | None = None,
    creation_overrides: dict[str, str] | None = None,
    info: RasterInfo | None = None,
) -> Plan:
    """Re-encode a raster (format, creation options, band selection) through the engine: a 1x
    nearest copy, so it resumes, writes ``.partial`` and keeps georeferencing like any run.
    ``info``: the input's description when it is not made yet (a workflow planning ahead)."""
    info = info or describe(input_path)
    return plan_classical(
        info,
        input_path,
        output_path,
        kernel="nearest",
        bands=parse_bands(bands, info),
        scale=1,
        output_format=output_format,
        creation_overrides=creation_overrides,
        grid=EXPORT_GRID,
    )


class ClassicalUpscaleTask(Task):
    @classmethod
    def stages_of(cls, plan: Plan) -> tuple[str, ...]:
        return ("process", "assemble") if plan.grid.halo > 0 else ("process",)

    @classmethod
    def unit_names_of(cls, plan: Plan) -> dict[str, str]:
        return {stage: "region" for stage in cls.stages_of(plan)}

    @classmethod
    def unit_shapes_of(cls, plan: Plan) -> dict[str, tuple[int, int]]:
        """Every stage's units are the regions (output chunks are region cores here)."""
        return {stage: plan.tile_grid().region_shape for stage in cls.stages_of(plan)}

    @classmethod
    def array_specs(cls, plan: Plan) -> dict[str, dict]:
        specs = arrays.output_specs(plan)
        if plan.grid.halo > 0:
            specs.update(arrays.regions_spec(plan, plan.output.count, plan.scale))
        specs.update(arrays.done_specs(cls.unit_shapes_of(plan)))
        return specs

    def __init__(
        self,
        plan: Plan,
        store: Workdir,
        reader: SourceReader,
        model=None,
        batch_size: int | None = None,
    ):
        super().__init__(plan, store, reader)  # a kernel, no model: model and batch_size unused
        self.upscaler = ClassicalUpscaler(plan.model, plan.scale)

    def process(self, index):
        region = self.grid.region_at(*index)
        values, valid = self.region_pixels(region)
        if self.plan.grid.halo == 0:
            arrays.write_core(
                self.store, "output", region.core.scale(self.plan.scale), self.pixels(values, valid)
            )
        else:
            arrays.write_extent(
                self.store,
                self.grid,
                index,
                np.where(valid, values, np.nan).astype(np.float32),
                self.plan.scale,
            )
        self.store.mark_done("process", index)

    def assemble(self, index):
        core = self.grid.region_at(*index).core
        values, valid = arrays.blend_regions(
            self.store, self.grid, core, self.plan.scale, self.plan.output.count
        )
        arrays.write_core(
            self.store, "output", core.scale(self.plan.scale), self.pixels(values, valid)
        )
        self.store.mark_done("assemble", index)

    def pixels(self, values, valid):
        return to_pixels(
            values, valid, self.plan.output.dtype, self.plan.output_fill, self.plan.output.nodata
        )

    def region_pixels(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """Output values and validity over the region's extent (scaled to output px)."""
        scale, context = self.plan.scale, self.upscaler.context
        overlap = self.plan.grid.overlap
        source_box = region.canvas.grow(context)
        source = self.reader.read(source_box)
        source_valid = valid_mask(source, self.plan.input.nodata)
        blender = Blender(region.extent.scale(scale), len(self.plan.bands), disjoint=overlap == 0)
        weights = (
            None if overlap == 0 else tile_weights(self.plan.grid.tile * scale, overlap * scale)
        )
        for tile in region.tiles:
            rows, cols = tile.grow(context).relative_to(source_box)
            pixels, valid = source[:, rows, cols], source_valid[:, rows, cols]
            if not valid.any():
                continue  # no data here: the blender leaves it without data
            values, valid_out = self.upscaler.upscale(pixels, valid)
            blender.add(tile.scale(scale), values, valid_out, weights)
        return blender.result(region.extent.scale(scale))
