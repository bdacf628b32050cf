"""What the tasks on a latent grid of the input grid / f share (inpaint, synthesize): stages, workdir
arrays, the mapping of latent boxes to input (= output) px, and the shared GroupNorm statistics of
a first stage without attention.

Their stages are those of super-resolution (denoise, assemble, decode); with shared statistics
(``plan.diffusion.shared_norm``) one-unit stages measure them first: ``encoder_stats`` before
denoise where the task encodes images (inpaint), ``decoder_stats`` before decode. Each writes a
small .npy file in the workdir that every later unit reads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .. import engine, norm_stats
from ..grid import Box, Span
from ..plan import Plan
from ..raster import read_reflected
from . import superres
from .superres import SuperResolutionTask

MODEL_STAGES = ("encoder_stats", "denoise", "decoder_stats", "decode")
# Windows pooled into one image to measure the statistics, and their side in latent px (at most):
# 4 x 32 x 32 latent px (65,536 image px at f = 4) estimate a mean and variance per group well, and
# cost 4 small encodes and decodes (9 windows of 64 took 6 minutes on a 2-core CPU).
STATS_SAMPLE = 4
STATS_SIDE = 32


def stages(plan: Plan) -> tuple[str, ...]:
    if not plan.diffusion.shared_norm:
        return superres.STAGES
    first = ("encoder_stats",) if plan.task == "inpaint" else ()
    return (*first, "denoise", "assemble", "decoder_stats", "decode")


def unit_names(plan: Plan) -> dict[str, str]:
    return superres.unit_names(plan) | {"encoder_stats": "sample", "decoder_stats": "sample"}


def unit_shapes(plan: Plan) -> dict[str, tuple[int, int]]:
    shapes = superres.unit_shapes(plan)
    return {stage: shapes.get(stage, (1, 1)) for stage in stages(plan)}


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

    def decoder_stats(self, index):
        """Measure the decoder's statistics over a sample of the assembled latent."""
        self._measure("decoder", self.read_latent, self.model.decode_latents, self.model.decoder_norms)
        self.store.mark_done("decoder_stats", index)

    def _measure(self, part: str, read, call, norms: int):
        """Run ``call`` on the sample windows (``read`` of each) pooled as one image; save the
        statistics of its ``norms`` GroupNorms."""
        recorder = norm_stats.Recorder(norms)
        call(np.stack([read(box) for box in self.stats_sample()]), norms=recorder)
        self._save_norms(part, recorder.as_array())

    def encoder_input(self, box: Box) -> np.ndarray:
        """The image the task encodes over latent ``box`` (tasks that encode override this)."""
        raise NotImplementedError(f"{type(self).__name__} encodes no images")

    def stats_sample(self) -> list[Box]:
        """The latent windows the statistics are measured on: a pure function of the plan."""
        side = min(STATS_SIDE, self.grid.height, self.grid.width)
        corners = norm_stats.sample_boxes(self.grid.height, self.grid.width, side, STATS_SAMPLE)
        return [Box(Span(y, y + side), Span(x, x + side)) for y, x in corners]

    def norms(self, part: str):
        """The run's statistics of ``part`` (encoder, decoder), or None without shared statistics."""
        if not self.plan.diffusion.shared_norm:
            return None
        path = self._norms_path(part)
        return _load_norms(path, path.stat().st_mtime_ns)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.model.encode_pixels(images, norms=self.norms("encoder"))

    def decoder(self):
        """The decode call of ``tiled_pass``, with the run's statistics."""
        return functools.partial(self.model.decode_latents, norms=self.norms("decoder"))

    def _norms_path(self, part: str) -> Path:
        return Path(self.store.path) / "norms" / f"{part}.npy"

    def _save_norms(self, part: str, table: np.ndarray):
        path = self._norms_path(part)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as file:  # np.save on a path would add ".npy"
            np.save(file, table)
        os.replace(partial, path)  # a reader never sees half a file

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


@functools.lru_cache(maxsize=8)
def _load_norms(path: Path, mtime_ns: int) -> np.ndarray:
    """Read once per process (the file's mtime in the key: a rerun's new statistics are read)."""
    return np.load(path)
