"""What the tasks on a latent grid of the input grid / f share (inpaint, synthesize): stages, workdir
arrays and the mapping of latent boxes to input (= output) px.

Their stages are those of super-resolution, ``decoder_stats`` included when the plan shares
GroupNorm statistics (by default for a first stage without attention, where that makes the tiled
passes exact); inpainting also encodes images, so it measures the encoder's first
(``encoder_stats``). Each statistics stage writes a small .npy file in the workdir that every later
unit reads.
"""

from __future__ import annotations

import numpy as np

from .. import engine
from ..grid import Box, Span
from ..plan import Plan
from ..raster import read_reflected
from . import superres
from .superres import SuperResolutionTask

MODEL_STAGES = ("encoder_stats", *superres.MODEL_STAGES)


def stages(plan: Plan) -> tuple[str, ...]:
    """Super-resolution's stages, with ``encoder_stats`` first where inpainting encodes images
    with shared statistics."""
    encodes = plan.task == "inpaint" and plan.diffusion.shared_norm
    return (("encoder_stats",) if encodes else ()) + superres.stages(plan)


def unit_names(plan: Plan) -> dict[str, str]:
    return superres.unit_names(plan) | {"encoder_stats": "sample"}


def unit_shapes(plan: Plan) -> dict[str, tuple[int, int]]:
    return superres.unit_shapes(plan, stages(plan))


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
        self.stages = stages(plan)
        self.unit_shapes = unit_shapes(plan)
        self.unit_names = unit_names(plan)

    # --- shared GroupNorm statistics ---------------------------------------------------------
    def encoder_stats(self, index):
        """Measure the encoder's statistics over a sample of the images it will encode."""
        self._measure("encoder", self.encoder_input, self.model.encode_pixels, self.model.encoder_norms)
        self.store.mark_done("encoder_stats", index)

    def encoder_input(self, box: Box) -> np.ndarray:
        """The image the task encodes over latent ``box`` (tasks that encode override this)."""
        raise NotImplementedError(f"{type(self).__name__} encodes no images")

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.model.encode_pixels(images, norms=self.norms("encoder"))

    def pixel_box(self, latent_box: Box) -> Box:
        """Input px of a latent box, clipped to the raster."""
        scaled = latent_box.scale(self.f)
        return Box(Span(scaled.y.start, min(scaled.y.stop, self.plan.input.height)),
                   Span(scaled.x.start, min(scaled.x.stop, self.plan.input.width)))

    def read_latent(self, box: Box) -> np.ndarray:
        """The blended latent over ``box``, reflected past the latent grid's edges."""
        latent = self.store.array("latent")
        return read_reflected(lambda rows, cols: latent[:, rows, cols], box, self.grid.height,
                              self.grid.width)


