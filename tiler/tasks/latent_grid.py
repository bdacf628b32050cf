"""What the tasks on a latent grid of the input grid / f share (inpaint, synthesize): the workdir
arrays and the mapping of latent boxes to input (= output) px. Their stages and units are those of
super-resolution."""

from __future__ import annotations

from .. import engine
from ..grid import Box, Span
from ..plan import Plan
from ..raster import read_reflected
from .superres import SuperResolutionTask, unit_shapes


def array_specs(plan: Plan) -> dict[str, dict]:
    """``output`` chunks of ``chunk`` latent px x f, region latents, the blended ``latent``."""
    grid, channels, chunk = plan.tile_grid(), plan.diffusion.latent_channels, plan.grid.chunk
    out, side = plan.output, plan.grid.chunk * plan.factor
    specs = {"output": dict(shape=(out.count, out.height, out.width),
                            chunks=(out.count, min(side, out.height), min(side, out.width)),
                            dtype=out.dtype, fill_value=plan.output_fill)}
    specs.update(engine.regions_spec(plan, channels, scale=1))
    specs["latent"] = dict(shape=(channels, grid.height, grid.width),
                           chunks=(channels, min(chunk, grid.height), min(chunk, grid.width)),
                           dtype="float32", fill_value=float("nan"))
    specs.update(engine.done_specs(unit_shapes(plan)))
    return specs


class LatentGridTask(SuperResolutionTask):
    """A super-resolution task whose latent px cover f x f input px."""

    def __init__(self, plan: Plan, store, reader, model, batch_size: int | None):
        super().__init__(plan, store, reader, model, batch_size)
        self.f = plan.factor

    def pixel_box(self, latent_box: Box) -> Box:
        """Input px of a latent box, clipped to the raster."""
        scaled = latent_box.scale(self.f)
        return Box(Span(scaled.y.start, min(scaled.y.stop, self.plan.input.height)),
                   Span(scaled.x.start, min(scaled.x.stop, self.plan.input.width)))

    def read_latent(self, box: Box):
        """The blended latent over ``box``, reflected past the latent grid's edges."""
        latent = self.store.array("latent")
        return read_reflected(lambda rows, cols: latent[:, rows, cols], box, self.grid.height,
                              self.grid.width)
