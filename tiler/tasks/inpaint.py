"""LDM inpainting (``tiler inpaint``): fill the masked area, keep every other pixel bit for bit.

Models: CompVis' inpainting LDM in tiler's format, or a diffusers StableDiffusionInpaintPipeline
folder (text-conditioned, KL f = 8, a 9-channel UNet); they differ in how the masked image and the
mask are laid out (``InpaintLayout``).
The latent grid is the input grid divided by the first stage's factor f (4 for the CompVis model).
Only the tiles within ``decode_halo`` latent px of the (dilated) mask go through the UNet, so the
cost follows the masked area. The LDM stages (tiler/tasks/ldm.py), with:

denoise   encode the masked image over the region canvas in windows with the decode halo, mask at
          latent size, run the fused lockstep sampler
          over the region's tiles near the mask; store the latent they cover (NaN elsewhere)
decode    a chunk without masked px copies the input; otherwise decode the windows of its decode
          tiles that hold masked px (latent px no tile computed: the encoded image), and
          composite: masked px decoded, others copied
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiler.errors import BadParameter, InputError
from tiler.geometry.grid import Box, Span
from tiler.ldm.first_stage import tiled_pass
from tiler.ldm.folders import INPAINT_PIPELINE, inspect_model
from tiler.ldm.options import DiffusionOptions
from tiler.raster.mask import MaskReader, MaskSpec, check_mask, to_latent, touched_tiles
from tiler.raster.sources import SourceReader, describe, is_virtual, parse_bands, path_identity
from tiler.raster.values import to_dtype
from tiler.tasks.ldm import LDMTask, plan_latent_grid
from tiler.workdir import arrays
from tiler.workdir.plan import MaskPlan, Plan
from tiler.workdir.store import Workdir

log = logging.getLogger("tiler")


def plan_inpaint(
    input_path,
    output_path=None,
    *,
    model: str,
    mask: MaskSpec,
    bands: str | None = None,
    output_format: str | None = None,
    creation_overrides: dict[str, str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    region: int | None = None,
    halo: int | None = None,
    diffusion: DiffusionOptions | None = None,
) -> Plan:
    """Describe input and mask, check the model folder (no weights loaded), scan the mask for the
    tiles to compute, and work out the run."""
    info = describe(input_path)
    band_list = parse_bands(bands, info)
    check_mask(mask, info, band_list)
    diffusion = diffusion or DiffusionOptions()
    folder = inspect_model(model, "inpaint", allow_pickle=diffusion.allow_pickle)
    channels = folder.first_stage["in_channels"]
    if len(band_list) not in (1, channels):
        raise BadParameter(
            "bands",
            f"{len(band_list)} bands selected; model {model} takes "
            f"{channels} bands (or 1, repeated)",
        )
    plan = plan_latent_grid(
        info,
        band_list,
        folder,
        model=model,
        command="inpaint",
        input_path=input_path,
        output_path=output_path,
        tag="filled",
        output_format=output_format,
        creation_overrides=creation_overrides,
        grid=dict(tile=tile, overlap=overlap, region=region, halo=halo),
        diffusion=diffusion,
        dilate=mask.dilate,
        mask=MaskPlan(source=mask.source, masked_px=0, tiles_touched=0),
    )
    return plan.model_copy(update={"mask": _scan(mask, info, band_list, plan)})


def _scan(mask: MaskSpec, info, bands, plan: Plan) -> MaskPlan:
    """Read the whole mask once: refuse an empty one, count the tiles each region will compute."""
    reader = MaskReader(mask, info, bands)
    grid = plan.tile_grid()
    try:
        coverage = touched_tiles(reader, grid, plan.factor, margin=plan.diffusion.decode_halo)
    finally:
        reader.close()
    where = mask.path or f"{info.path} ({mask.source}{f' {mask.band}' if mask.band else ''})"
    if coverage.masked_px == 0:
        raise InputError(
            f"{where}: the mask is empty: nothing to fill (the output would equal the "
            "input); expected non-zero mask pixels"
        )
    if coverage.masked_px == coverage.total_px:
        log.warning(
            "the mask covers the whole raster: every pixel is generated from the model alone"
        )
    stride = grid.stride
    computed = sum(
        1
        for region in grid.regions()
        for tile in region.tiles
        if (tile.y.start // stride, tile.x.start // stride) in coverage.tiles
    )
    _, size, mtime = path_identity(mask.path) if mask.path else (None, -1, -1)
    local = mask.path and not is_virtual(mask.path)
    return MaskPlan(
        source=mask.source,
        path=str(Path(mask.path).absolute()) if local else mask.path,
        band=mask.band,
        dilate=mask.dilate,
        size_bytes=size,
        mtime_ns=mtime,
        masked_px=coverage.masked_px,
        tiles_touched=computed,
    )


@dataclass(frozen=True)
class InpaintLayout:
    """How a model takes the masked image and the mask: the value of masked px in the image it
    encodes, the mask's values where px are filled and kept, and which comes first after the
    latent."""

    masked_value: float
    fill: float
    keep: float
    mask_first: bool


# CompVis' inpainting LDM: encode(image, masked px -1) ++ mask (+1 fill, -1 keep); Stable Diffusion
# inpainting (diffusers' StableDiffusionInpaintPipeline): mask (1 fill, 0 keep) ++ encode(image,
# masked px 0)
COMPVIS_LAYOUT = InpaintLayout(masked_value=-1.0, fill=1.0, keep=-1.0, mask_first=False)
STABLE_DIFFUSION_LAYOUT = InpaintLayout(masked_value=0.0, fill=1.0, keep=0.0, mask_first=True)


class InpaintTask(LDMTask):
    """The LDM stages with the masked image and the mask as conditioning, only the tiles near the
    mask computed, and a composite at decode."""

    encodes_images = True

    def __init__(
        self, plan: Plan, store: Workdir, reader: SourceReader, model, batch_size: int | None
    ):
        super().__init__(plan, store, reader, model, batch_size)
        self.mask = MaskReader(plan.mask.spec(), reader.info, plan.bands)
        self.margin = plan.diffusion.decode_halo  # latent px around the mask that are denoised
        stable_diffusion = getattr(model.model, "pipeline", "") == INPAINT_PIPELINE
        self.layout = STABLE_DIFFUSION_LAYOUT if stable_diffusion else COMPVIS_LAYOUT

    # --- units -------------------------------------------------------------------------------
    def denoise(self, index):
        region = self.grid.region_at(*index)
        tiles = self.selected_tiles(region)
        if not tiles:  # nothing to fill near this region: its block stays NaN (the fill value)
            self.store.mark_done("denoise", index)
            return
        latent = self.sample(region.canvas, tiles)
        covered = np.zeros(region.canvas.shape, dtype=bool)
        for tile in tiles:
            covered[tile.relative_to(region.canvas)] = True
        latent[:, ~covered] = np.nan
        rows, cols = region.extent.relative_to(region.canvas)
        arrays.write_extent(self.store, self.grid, index, latent[:, rows, cols])
        self.store.mark_done("denoise", index)

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        box = self.pixel_box(core)
        pixels = self.reader.read(box)
        fill = self.mask.read(box)
        if fill.any():

            def holds_mask(piece: Box) -> bool:  # decode only the decode tiles with masked px
                rows, cols = self.pixel_box(piece).relative_to(box)
                return bool(fill[rows, cols].any())

            pixels = self.composite(pixels, self.decoded(core, holds_mask), fill)
        arrays.write_core(self.store, "output", box, pixels)
        self.store.mark_done("decode", index)

    # --- inpainting specifics ----------------------------------------------------------------
    def latent_mask(self, latent_box: Box) -> np.ndarray:
        """True where any input px of a latent px is to be filled."""
        return to_latent(self.mask.read(latent_box.scale(self.f)), self.f)

    def selected_tiles(self, region) -> tuple[Box, ...]:
        """The region's tiles within ``margin`` latent px of the mask."""
        reach = region.canvas.grow(self.margin)
        near = self.latent_mask(reach)
        inside = Box(Span(0, self.grid.height), Span(0, self.grid.width)).intersection(reach)
        keep = np.zeros_like(near)
        keep[inside.relative_to(reach)] = True
        near &= keep  # as the plan's scan: reflected mask px past the edge do not count
        return tuple(
            tile for tile in region.tiles if near[tile.grow(self.margin).relative_to(reach)].any()
        )

    def normalised(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Input px of ``box`` (reflected past the edges) in [-1, 1] as the model's channels, and
        their validity."""
        image, valid = self.to_model_range(self.reader.read(box), self.model.image_channels)
        return image, valid.all(axis=0)

    def encoder_input(self, box: Box) -> np.ndarray:
        """The masked image over latent ``box``, as ``condition`` encodes it (masked px: the
        layout's value)."""
        image, _ = self.normalised(box.scale(self.f))
        masked = np.float32(self.layout.masked_value)
        return np.where(self.mask.read(box.scale(self.f))[None], masked, image)

    def condition(self, canvas: Box) -> np.ndarray:
        """encode(masked image) and the mask at latent size (its top-left px, as diffusers
        resizes it) over ``canvas``, in the model's layout.

        The canvas is encoded in the decode tiles' windows: a region's whole canvas in one encoder
        call would need about 2.5 KB per px in float32 (17 GB for the default region). With the
        run's shared GroupNorm statistics and a halo covering the encoder's reach, the windows
        equal one whole-canvas encode to float rounding (tests/test_norm_stats.py)."""
        spec = self.plan.diffusion
        encoded = tiled_pass(
            self.encode,
            self.encoder_input,
            canvas,
            spec.decode_tile,
            spec.decode_halo,
            1,
            self.model.latent_channels,
            self.model.decode_batch_size,
        )
        fill = self.mask.read(canvas.scale(self.f))[:: self.f, :: self.f]
        layout = self.layout
        mask_latent = np.where(fill, layout.fill, layout.keep).astype(np.float32)[None]
        parts = [mask_latent, encoded] if layout.mask_first else [encoded, mask_latent]
        return np.concatenate(parts)

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
        out = pixels.copy()
        out[:, fill] = to_dtype(values[:, fill].astype(np.float32), self.plan.output.dtype)
        return out
