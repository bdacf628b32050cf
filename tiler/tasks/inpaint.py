"""LDM inpainting on the engine: fill the masked area, keep every other pixel bit for bit.

The latent grid is the input grid divided by the first stage's factor f (4 for the CompVis model).
Only the tiles within ``decode_halo`` latent px of the (dilated) mask go through the UNet, so the
cost follows the masked area. Stages, each unit one region or one output chunk:

denoise   encode the masked image (masked px = -1) over the region canvas in windows with the decode
          halo, mask at latent size (+1 fill / -1 keep), run the fused lockstep sampler
          over the region's tiles near the mask; store the latent they cover (NaN elsewhere)
assemble  blend the latents of the regions touching a chunk -> ``latent``
decode    a chunk without masked px copies the input; otherwise decode the windows of its decode
          tiles that hold masked px (latent px no tile computed: the encoded image), and
          composite: masked px decoded, others copied
"""

from __future__ import annotations

import numpy as np

from .. import engine
from ..first_stage import tiled_pass
from ..grid import Box, Span
from ..plan import Plan
from ..raster import SourceReader
from .latent_grid import MODEL_STAGES, LatentGridTask, array_specs, stages, unit_names, unit_shapes  # noqa: F401


class InpaintTask(LatentGridTask):
    """Runs one unit of each stage; the SR task's sampling, assembly and value mapping, with the
    inpainting conditioning, tile selection and composite."""


    def __init__(self, plan: Plan, store, reader: SourceReader, model, batch_size: int | None):
        super().__init__(plan, store, reader, model, batch_size)
        from ..mask import MaskReader

        self.mask = MaskReader(plan.mask.spec(), reader.info, plan.bands)
        self.margin = plan.diffusion.decode_halo  # latent px around the mask that are denoised

    # --- units -------------------------------------------------------------------------------
    def denoise(self, index):
        import torch

        from ..sample import denoise_canvas

        region = self.grid.region_at(*index)
        tiles = self.selected_tiles(region)
        rows, cols = region.extent.relative_to(region.canvas)
        if not tiles:  # nothing to fill near this region: its block stays NaN (the fill value)
            self.store.mark_done("denoise", index)
            return
        with torch.inference_mode():
            condition = self.model.to_device(self.condition(region.canvas))
            latent = denoise_canvas(self.model.unet_call, self.model.new_scheduler(), condition,
                                    region.canvas, tiles, self.model.latent_channels, self.options)
        latent = latent.float().cpu().numpy()
        covered = np.zeros(region.canvas.shape, dtype=bool)
        for tile in tiles:
            covered[tile.relative_to(region.canvas)] = True
        latent[:, ~covered] = np.nan
        engine.write_extent(self.store, self.grid, index, latent[:, rows, cols])
        self.store.mark_done("denoise", index)

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        box = self.pixel_box(core)
        pixels = self.reader.read(box)
        fill = self.mask.read(box)
        if fill.any():
            spec = self.plan.diffusion

            def holds_mask(piece: Box) -> bool:  # decode only the decode tiles with masked px
                rows, cols = self.pixel_box(piece).relative_to(box)
                return bool(fill[rows, cols].any())

            decoded = tiled_pass(self.decoder(), self.read_latent, core, spec.decode_tile,
                                 spec.decode_halo, self.f, self.model.image_channels,
                                 self.model.decode_batch_size, holds_mask)[:, :box.y.size, :box.x.size]
            values = self.denormalise(decoded)
            pixels = self.composite(pixels, values, fill)
        engine.write_core(self.store, "output", box, pixels)
        self.store.mark_done("decode", index)

    # --- inpainting specifics ----------------------------------------------------------------
    def latent_mask(self, latent_box: Box) -> np.ndarray:
        """True where any input px of a latent px is to be filled."""
        from ..mask import _to_latent

        return _to_latent(self.mask.read(latent_box.scale(self.f)), self.f)

    def selected_tiles(self, region) -> tuple[Box, ...]:
        """The region's tiles within ``margin`` latent px of the mask."""
        reach = region.canvas.grow(self.margin)
        near = self.latent_mask(reach)
        inside = Box(Span(0, self.grid.height), Span(0, self.grid.width)).intersection(reach)
        keep = np.zeros_like(near)
        keep[inside.relative_to(reach)] = True
        near &= keep  # as the plan's scan: reflected mask px past the edge do not count
        return tuple(tile for tile in region.tiles
                     if near[tile.grow(self.margin).relative_to(reach)].any())

    def normalised(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Input px of ``box`` (reflected past the edges) in [-1, 1] as the model's channels, and
        their validity."""
        image, valid = self.to_model_range(self.reader.read(box), self.model.image_channels)
        return image, valid.all(axis=0)

    def encoder_input(self, box: Box) -> np.ndarray:
        """The masked image over latent ``box``, as ``condition`` encodes it (CompVis: masked px
        -1)."""
        image, _ = self.normalised(box.scale(self.f))
        return np.where(self.mask.read(box.scale(self.f))[None], np.float32(-1), image)

    def condition(self, canvas: Box) -> np.ndarray:
        """encode(masked image) ++ mask at latent size (+1 fill, -1 keep) over ``canvas``.

        The canvas is encoded in the decode tiles' windows: a region's whole canvas in one encoder
        call would need about 2.5 KB per px in float32 (17 GB for the default region). With the
        run's shared GroupNorm statistics and a halo covering the encoder's reach, the windows
        equal one whole-canvas encode to float rounding (tests/test_norm_stats.py)."""
        spec = self.plan.diffusion
        encoded = tiled_pass(self.encode, self.encoder_input, canvas, spec.decode_tile,
                             spec.decode_halo, 1, self.model.latent_channels,
                             self.model.decode_batch_size)
        fill = self.mask.read(canvas.scale(self.f))
        mask_latent = np.where(fill[::self.f, ::self.f], 1.0, -1.0).astype(np.float32)[None]
        return np.concatenate([encoded, mask_latent])

    def read_latent(self, box: Box) -> np.ndarray:
        """The assembled latent over ``box``; where no tile was computed, the encoded image."""
        values = super().read_latent(box)
        missing = np.isnan(values)
        if missing.any():
            image, _ = self.normalised(box.scale(self.f))
            values = np.where(missing, self.encode(image[None])[0], values)
        return values

    def composite(self, pixels: np.ndarray, values: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """Masked px from the model (rounded, clipped to the dtype), all others the input's."""
        from ..raster import to_dtype

        out = pixels.copy()
        out[:, fill] = to_dtype(values[:, fill].astype(np.float32), self.plan.output.dtype)
        return out


TASK = InpaintTask  # what tasks.build_task makes for a plan of this module
