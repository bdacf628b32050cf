"""Upscaling with a classical kernel: every tile of a region is read with its context, resampled,
and blended onto the region's extent in output pixels.

Stages: ``process`` (per region); with a halo, also ``assemble`` (per output chunk: blend the
regions touching it). Without halo a region's core is final and goes straight to ``output``.
"""

from __future__ import annotations

import numpy as np

from .. import engine
from ..blend import Blender
from ..grid import Region
from ..plan import Plan
from ..raster import SourceReader, to_pixels, valid_mask
from ..resample import ClassicalUpscaler
from ..weights import tile_weights


def stages(plan: Plan) -> tuple[str, ...]:
    return ("process", "assemble") if plan.grid.halo > 0 else ("process",)


# Stages that need the model on a device (none: classical kernels run anywhere).
MODEL_STAGES: tuple[str, ...] = ()


def unit_names(plan: Plan) -> dict[str, str]:
    return {stage: "region" for stage in stages(plan)}


def unit_shapes(plan: Plan) -> dict[str, tuple[int, int]]:
    """Every stage's units are the regions (output chunks are region cores here)."""
    return {stage: plan.tile_grid().region_shape for stage in stages(plan)}


def array_specs(plan: Plan) -> dict[str, dict]:
    specs = engine.output_specs(plan)
    if plan.grid.halo > 0:
        specs.update(engine.regions_spec(plan, plan.output.count, plan.scale))
    specs.update(engine.done_specs(unit_shapes(plan)))
    return specs


class ClassicalUpscaleTask:
    def __init__(self, plan: Plan, store, reader: SourceReader):
        self.plan = plan
        self.store = store
        self.reader = reader
        self.grid = plan.tile_grid()
        self.upscaler = ClassicalUpscaler(plan.model, plan.scale)
        self.stages = stages(plan)
        self.unit_shapes = unit_shapes(plan)
        self.unit_names = unit_names(plan)

    def process(self, index):
        region = self.grid.region_at(*index)
        values, valid = self.region_pixels(region)
        if self.plan.grid.halo == 0:
            engine.write_core(self.store, "output", region.core.scale(self.plan.scale),
                              self.pixels(values, valid))
        else:
            engine.write_extent(self.store, self.grid, index,
                                np.where(valid, values, np.nan).astype(np.float32), self.plan.scale)
        self.store.mark_done("process", index)

    def assemble(self, index):
        core = self.grid.region_at(*index).core
        values, valid = engine.blend_regions(self.store, self.grid, core, self.plan.scale,
                                             self.plan.output.count)
        engine.write_core(self.store, "output", core.scale(self.plan.scale), self.pixels(values, valid))
        self.store.mark_done("assemble", index)

    def pixels(self, values, valid):
        return to_pixels(values, valid, self.plan.output.dtype, self.plan.output_fill,
                         self.plan.output.nodata)

    def region_pixels(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """Output values and validity over the region's extent (scaled to output px)."""
        scale, context = self.plan.scale, self.upscaler.context
        overlap = self.plan.grid.overlap
        source_box = region.canvas.grow(context)
        source = self.reader.read(source_box)
        source_valid = valid_mask(source, self.plan.input.nodata)
        blender = Blender(region.extent.scale(scale), len(self.plan.bands), disjoint=overlap == 0)
        weights = None if overlap == 0 else tile_weights(self.plan.grid.tile * scale, overlap * scale)
        for tile in region.tiles:
            rows, cols = tile.grow(context).relative_to(source_box)
            pixels, valid = source[:, rows, cols], source_valid[:, rows, cols]
            if not valid.any():
                continue  # no data here: the blender leaves it without data
            values, valid_out = self.upscaler.upscale(pixels, valid)
            blender.add(tile.scale(scale), values, valid_out, weights)
        return blender.result(region.extent.scale(scale))
