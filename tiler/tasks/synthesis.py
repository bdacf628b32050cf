"""Semantic synthesis on the engine: an RGB image from a raster of class labels.

The latent grid is the label grid divided by the first stage's factor f (4 for the CompVis model);
every tile is computed. The conditioning of a latent box is the label rescaler applied to its
labels (tiler/labels.py): with the CompVis card (bilinear x0.5 twice) each latent px sees exactly
its own f x f labels, so tiles and regions need no label context. Stages, each unit one region or
one output chunk:

denoise   read the region canvas's labels, map them to the conditioning, run the fused lockstep
          sampler, store the latent of the region's extent
assemble  blend the latents of the regions touching a chunk -> ``latent``
decode    decode the chunk's latent in windows with a halo -> RGB in [0, 255]; px without a class
          are nodata (0), generated px are kept >= 1 then
"""

from __future__ import annotations

import numpy as np

from .. import engine
from ..first_stage import tiled_pass
from ..grid import Box
from ..plan import Plan
from ..raster import to_pixels
from .latent_grid import MODEL_STAGES, LatentGridTask, array_specs, stages, unit_names, unit_shapes  # noqa: F401


class SynthesisTask(LatentGridTask):
    """Runs one unit of each stage: the SR task's sampling and assembly with label conditioning."""


    def __init__(self, plan: Plan, store, reader, model, batch_size: int | None):
        super().__init__(plan, store, reader, model, batch_size)
        self.labels = label_conditioner(plan)
        self.margin = self.labels.margin()

    def condition(self, canvas: Box) -> np.ndarray:
        """The rescaled label vectors over the latent ``canvas`` (labels reflected past the edges)."""
        outer = canvas.grow(self.margin)
        condition = self.labels.condition(self.reader.read(outer.scale(self.f)))
        rows, cols = canvas.relative_to(outer)
        return condition[:, rows, cols]

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        box = self.pixel_box(core)
        spec = self.plan.diffusion
        decoded = tiled_pass(self.decoder(), self.read_latent, core, spec.decode_tile,
                             spec.decode_halo, self.f, self.model.image_channels,
                             self.model.decode_batch_size)[:, :box.y.size, :box.x.size]
        values = self.denormalise(decoded)
        valid = self.labels.has_class(self.reader.read(box))[None]
        if self.plan.output.nodata is not None:  # 0 marks px without a class, in every band
            values = np.maximum(values, np.float32(1))
        out = self.plan.output
        engine.write_core(self.store, "output", box,
                          to_pixels(values, np.broadcast_to(valid, values.shape), out.dtype,
                                    self.plan.output_fill))
        self.store.mark_done("decode", index)

    def denormalise(self, pixels: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [0, 255], every channel kept."""
        return (pixels + np.float32(1)) * np.float32(127.5)


def label_conditioner(plan: Plan):
    """The label conditioning of ``plan``'s model: its card's resizing and its rescaler weights."""
    from pathlib import Path

    from safetensors.numpy import load_file

    from ..labels import LabelConditioner
    from ..model_card import RESCALER, RESCALER_KEY, read_card

    model_dir = Path(plan.diffusion.model_dir)
    card = read_card(model_dir).conditioning
    weight = load_file(str(model_dir / RESCALER))[RESCALER_KEY]
    return LabelConditioner(plan.labels, plan.input.nodata, weight, card.rescale_stages,
                            card.multiplier, card.method)


TASK = SynthesisTask  # what tasks.build_task makes for a plan of this module
