"""Upscaling with a classical kernel: every tile of a region is read with its context, resampled,
and blended onto the region's canvas in output pixels."""

from __future__ import annotations

import numpy as np

from ..blend import Blender
from ..grid import Region
from ..plan import Plan
from ..raster import SourceReader, valid_mask
from ..resample import ClassicalUpscaler
from ..weights import tile_weights


class ClassicalUpscaleTask:
    def __init__(self, plan: Plan, reader: SourceReader):
        self.plan = plan
        self.reader = reader
        self.upscaler = ClassicalUpscaler(plan.model, plan.scale)

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
