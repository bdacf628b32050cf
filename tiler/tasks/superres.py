"""LDM 4x super-resolution (``tiler upscale --model`` an LDMSuperResolutionPipeline folder, or a
StableDiffusionUpscalePipeline folder: the text-conditioned x4 upscaler).

The latent grid IS the low-resolution pixel grid (VQ f = 4, 4x): f = 1 of the input grid, and the
output is ``plan.scale`` = 4 times the input. The stages are the LDM ones (tiler/tasks/ldm.py); the
conditioning is the low-res image itself, and with ``--back-project`` (the default) a chunk's
decoded px are corrected so that each 4 x 4 block's mean equals the input px under it
(tiler/geometry/back_projection.py), from the ``block_means`` of every chunk within
``back_projection.HALO`` px.
"""

from __future__ import annotations

import numpy as np

from tiler.errors import BadParameter
from tiler.geometry import back_projection
from tiler.geometry.grid import Box
from tiler.ldm.folders import ModelFolder, inspect_model
from tiler.ldm.options import DiffusionOptions, sampling_spec
from tiler.raster.sources import RasterInfo, read_reflected
from tiler.raster.values import to_pixels, valid_mask
from tiler.tasks.ldm import LDMTask, check_tile
from tiler.tasks.memory import check_memory, widths
from tiler.tasks.planning import grid_sizes, plan_with_output
from tiler.workdir import arrays
from tiler.workdir.plan import DiffusionSpec, Plan

# Grid defaults in latent px (= low-res px), from benchmarks/superres_gpu.py on an H100: tiles of
# 128 keep the UNet efficient; an overlap of 16 blends tiles over 64 output px; regions of 1024 with
# a halo of 32 keep the computed area within about 1.8x the raster (region 512 and overlap 32 gave
# 2.6x); regions of 2048 compute 13% less on a 50000 px output (1.54x, benchmarks/region_size.py)
# but leave GPUs idle on mid-size rasters (a 20000 px output: 9 regions for 8 GPUs against 25), so
# the default stays 1024 and one GPU may pass --region 2048; decode windows of 128 + 2 x 16 cost
# 1.56x a halo-free decode (+32: 2.25x). Output chunks of 256 latent px (1024 output px) are the
# unit of decoding: small enough that two threads keep the GPU busy while one does a chunk's CPU
# work.
GRID_DEFAULTS = dict(tile=128, overlap=16, region=1024, halo=32, chunk=256)


def plan_superres(
    info: RasterInfo,
    input_path,
    output_path,
    *,
    model: str,
    bands: tuple[int, ...],
    scale: int | None,
    output_format: str | None,
    creation_overrides: dict[str, str] | None,
    grid: dict[str, int | None],
    chunk: int | None,
    diffusion: DiffusionOptions,
) -> Plan:
    """Check the model folder and the options against the input (no weights loaded) and work out
    the run; ``grid``: the user's tile, overlap, region and halo (None = default)."""
    sizes = grid_sizes(GRID_DEFAULTS, **grid)
    sizes["chunk"] = chunk or GRID_DEFAULTS["chunk"]
    spec, folder = diffusion_spec(model, info, bands, scale, sizes["tile"], diffusion)
    scale = folder.factor
    plan = plan_with_output(
        info,
        input_path,
        output_path,
        tag=f"x{scale}",
        output_format=output_format,
        creation_overrides=creation_overrides,
        model=model,
        scale=scale,
        context=0,
        bands=bands,
        diffusion=spec,
        **sizes,
    )
    check_memory(plan, *widths(folder))
    return plan


def diffusion_spec(
    model: str,
    info,
    bands: tuple[int, ...],
    scale: int | None,
    tile: int,
    options: DiffusionOptions,
) -> tuple[DiffusionSpec, ModelFolder]:
    """Check the model folder and the options against the input, without loading weights.
    Returns the spec and the folder (its factor is the model's scale)."""
    folder = inspect_model(model, "superres", allow_pickle=options.allow_pickle)
    factor, cond_channels = folder.factor, folder.cond_channels
    if scale is not None and scale != factor:
        raise BadParameter("scale", f"{scale}: model {model} upscales by {factor}")
    if len(bands) not in (1, cond_channels):
        raise BadParameter(
            "bands",
            f"{len(bands)} bands selected ({','.join(map(str, bands))}); "
            f"model {model} takes {cond_channels} bands (or 1, repeated): choose them "
            f"with e.g. -b {','.join(map(str, range(1, cond_channels + 1)))}",
        )
    check_tile(tile, folder, model)
    spec = sampling_spec(
        folder,
        info,
        bands,
        options,
        back_project=_back_project(options, factor, model),
    )
    return spec, folder


def _back_project(options: DiffusionOptions, factor: int, model: str) -> bool:
    chosen = options.back_project
    if chosen is None:
        chosen = back_projection.ENABLED_BY_DEFAULT
    if chosen and factor % 2:  # the convergence of back_projection.py holds for even factors
        raise BadParameter(
            "back_project",
            f"model {model} upscales by {factor}; back-projection "
            "needs an even factor (use --no-back-project)",
        )
    return chosen


class SuperResolutionTask(LDMTask):
    """The LDM stages with the low-res image as conditioning, and back-projection at decode."""

    def condition(self, canvas: Box) -> np.ndarray:
        """Low-res pixels of ``canvas`` in [-1, 1] (no-data pixels neutral 0), as the model's
        channels: a single band is repeated into every channel. The x4 upscaler's are noised to
        the plan's noise level with keyed noise: the same at a pixel whatever the tiling."""
        image = self.to_model_range(self.reader.read(canvas), self.model.cond_channels)[0]
        level = self.plan.diffusion.noise_level
        if level is None:
            return image
        from tiler.ldm.noise import LOW_RES_STEP, keyed_noise

        noise = keyed_noise(self.plan.diffusion.seed, LOW_RES_STEP, len(image), canvas)
        return self.model.noise_low_res(image, level, noise.numpy())

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        values = self.decoded(core)
        if self.plan.diffusion.back_project:
            values = values + self.correction(core)  # float64
        valid = self.output_validity(core)
        arrays.write_core(
            self.store,
            "output",
            core.scale(self.plan.scale),
            to_pixels(
                values,
                valid,
                self.plan.output.dtype,
                self.plan.output_fill,
                self.plan.output.nodata,
            ),
        )
        self.store.mark_done("decode", index)

    def output_validity(self, core: Box) -> np.ndarray:
        """Output px have data where their (nearest) input px has data."""
        valid = valid_mask(self.reader.read(core), self.plan.input.nodata)
        scale = self.plan.scale
        return np.repeat(np.repeat(valid, scale, axis=1), scale, axis=2)

    # --- back-projection (plan.diffusion.back_project) --------------------------------------------
    def block_means(self, index):
        """Store the f x f block means of the chunk's decoded px. ``decode`` decodes the chunk
        again: two decodes per chunk, where decoding it grown by the halo would take four times the
        windows with the default grid (the halo reaches into every neighbouring decode tile)."""
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        means = back_projection.block_mean(self.decoded(core), self.plan.scale)
        arrays.write_core(self.store, "block_means", core, means.astype(np.float32))
        self.store.mark_done("block_means", index)

    def correction(self, core: Box) -> np.ndarray:
        """Back-projection's correction of the decoded px over ``core`` (raster units, float64),
        from the residual (input - block means; none at nodata px) over ``core`` grown by the
        halo, reflected past the raster's edges like every read: a chunk gets the whole raster's
        correction."""
        grown = core.grow(back_projection.HALO)
        lowres = self.reader.read(grown)
        valid = valid_mask(lowres, self.plan.input.nodata)
        stored = self.store.array("block_means")
        means = read_reflected(
            lambda rows, cols: stored[:, rows, cols],
            grown,
            self.plan.input.height,
            self.plan.input.width,
        )
        residual = np.where(valid, lowres.astype(np.float64) - means, 0.0)
        return back_projection.correction(
            residual, valid, self.plan.scale, margin=back_projection.HALO
        )
