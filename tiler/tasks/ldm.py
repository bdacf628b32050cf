"""What every LDM task shares: the stages on the latent grid, the LDMTask base class that runs
them, and the planning of tasks whose models come in tiler's model-directory format.

The latent grid is the input grid divided by the first stage's factor f (``plan.factor``): f = 4
for inpainting and synthesis with the CompVis models, f = 1 for super-resolution, whose latent grid
IS the low-resolution pixel grid; the output is ``plan.scale`` times the input (4 for LDM-SR).
Stages, each unit one region or one output chunk (one latent chunk x f x scale output px):

encode_text  (text-conditioned models; one unit) encode the prompts once with the model's CLIP text
          encoder -> a small .npy file that every denoise unit reads
encoder_stats  (tasks that encode images, with shared statistics; one unit) measure the encoder's
          GroupNorm statistics over a sample of the images it will encode
denoise   the region's conditioning over its canvas, the fused lockstep sampler over its tiles,
          the latent of its extent stored
assemble  blend the latents of the regions touching a chunk (region weights) -> ``latent``
decoder_stats  (shared statistics, the default; one unit) measure the decoder's GroupNorm
          statistics over a sample of the latent, so that every window decodes with the same ones
block_means  (super-resolution with ``--back-project``) decode the chunk, store its f x f block
          means
decode    decode the chunk's latent in fixed-shape windows with a halo -> pixels -> ``output``

Each statistics stage writes a small .npy file in the workdir that every later unit reads.
Text-conditioned UNets get the embeddings through cross-attention, the x4 upscaler its noise level
as class labels, and classifier-free guidance doubles each UNet call (tiler/ldm/guidance.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from tiler.errors import BadParameter
from tiler.geometry.grid import Box, Span
from tiler.ldm import norm_stats
from tiler.ldm.first_stage import tiled_pass
from tiler.ldm.folders import ModelFolder
from tiler.ldm.options import DiffusionOptions, sampling_spec
from tiler.ldm.runner import ModelRunner, load_npy
from tiler.raster.sources import RasterInfo, SourceReader, read_reflected
from tiler.raster.values import valid_mask
from tiler.tasks.base import Task
from tiler.tasks.memory import check_memory, widths
from tiler.tasks.planning import grid_sizes, plan_with_output
from tiler.workdir import arrays
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir

# Shared GroupNorm statistics (tiler/ldm/norm_stats.py) are measured on STATS_SAMPLE windows of at
# most STATS_SIDE latent px pooled into one image: 4 x 32 x 32 latent px estimate a mean and
# variance per group well, and cost 4 small encodes and decodes (9 windows of 64 took 6 minutes on a
# 2-core CPU).
STATS_SAMPLE = 4
STATS_SIDE = 32

# Latent px of the tasks in tiler's model-directory format (the CompVis inpainting and synthesis
# models were trained at 64 and 128 and run convolutionally on larger latents); the output chunk is
# 256 latent px = 1024 input px. Regions of 1024 latent px cover the same output area as
# super-resolution's: on a 20000 px raster they denoise 2.09x the raster's area in tiles against
# 2.56x for regions of 512, with the same balance on 8 GPUs (benchmarks/region_size.py); the
# encoder and decoder work in windows whatever the region.
LATENT_GRID_DEFAULTS = dict(tile=64, overlap=16, region=1024, halo=32, chunk=256)


def plan_latent_grid(
    info: RasterInfo,
    bands: tuple[int, ...],
    folder: ModelFolder,
    *,
    model: str,
    command: str,
    input_path,
    output_path,
    tag: str,
    output_format: str | None,
    creation_overrides: dict[str, str] | None,
    grid: dict[str, int | None],
    diffusion: DiffusionOptions,
    dilate: int = 0,
    **extra,
) -> Plan:
    """The plan of ``command`` (inpaint, synthesize) on ``info`` with the model in ``folder``;
    OUTPUT as given or INPUT-STEM_TAG; ``grid`` the user's tile, overlap, region and halo (None =
    default); ``extra``: the task's own plan fields. The output grid is the input's."""
    if diffusion.back_project:
        raise BadParameter(
            "back_project",
            f"{command} has no low-resolution input to agree "
            "with; only super-resolution (tiler upscale) back-projects",
        )
    sizes = grid_sizes(LATENT_GRID_DEFAULTS, **grid)
    sizes["chunk"] = LATENT_GRID_DEFAULTS["chunk"]
    check_tile(sizes["tile"], folder, model)
    spec = sampling_spec(folder, info, bands, diffusion)
    plan = plan_with_output(
        info,
        input_path,
        output_path,
        tag=tag,
        output_format=output_format,
        creation_overrides=creation_overrides,
        model=model,
        scale=1,
        context=0,
        bands=bands,
        diffusion=spec,
        command=command,
        factor=folder.factor,
        **sizes,
        **extra,
    )
    check_memory(plan, *widths(folder), dilate=dilate)
    return plan


def check_tile(tile: int, folder: ModelFolder, model: str):
    if tile % folder.tile_multiple:
        raise BadParameter(
            "tile",
            f"{tile} is not a multiple of {folder.tile_multiple}, which the UNet of {model} needs",
        )


class LDMTask(Task):
    """Runs one unit of each LDM stage; holds the model and the source reader for the whole run.
    A task says how its conditioning is made (``condition``) and, where it differs, how a chunk is
    decoded (``decode``)."""

    model_stages: ClassVar[tuple[str, ...]] = (
        "encode_text",
        "encoder_stats",
        "denoise",
        "decoder_stats",
        "block_means",
        "decode",
    )
    encodes_images: ClassVar[bool] = False  # with shared statistics, an encoder_stats stage first

    def __init__(
        self,
        plan: Plan,
        store: Workdir,
        reader: SourceReader,
        model: ModelRunner,
        batch_size: int | None,
    ):
        super().__init__(plan, store, reader)
        from tiler.ldm.sampling import SamplingOptions

        self.model = model
        self.f = plan.factor
        spec = plan.diffusion
        self.options = SamplingOptions(
            steps=spec.steps,
            eta=spec.eta,
            seed=spec.seed,
            batch_size=batch_size or model.default_batch_size,
            overlap=plan.grid.overlap,
        )
        self.low, self.high = spec.value_range

    # --- the stages, declared once --------------------------------------------------------------
    @classmethod
    def stages_of(cls, plan: Plan) -> tuple[str, ...]:
        spec = plan.diffusion
        return (
            (("encode_text",) if spec.text is not None else ())
            + (("encoder_stats",) if cls.encodes_images and spec.shared_norm else ())
            + ("denoise", "assemble")
            + (("decoder_stats",) if spec.shared_norm else ())
            + (("block_means",) if spec.back_project else ())
            + ("decode",)
        )

    @classmethod
    def unit_names_of(cls, plan: Plan) -> dict[str, str]:
        return {
            "encode_text": "prompt",
            "encoder_stats": "sample",
            "denoise": "region",
            "assemble": "chunk",
            "decoder_stats": "sample",
            "block_means": "chunk",
            "decode": "chunk",
        }

    @classmethod
    def unit_shapes_of(cls, plan: Plan) -> dict[str, tuple[int, int]]:
        """denoise one unit per region; assemble, block_means and decode one per output chunk; the
        statistics stages one unit."""
        grid = plan.tile_grid()
        chunks = grid.chunk_shape(plan.grid.chunk)
        shapes = {
            "denoise": grid.region_shape,
            "assemble": chunks,
            "block_means": chunks,
            "decode": chunks,
        }
        return {stage: shapes.get(stage, (1, 1)) for stage in cls.stages_of(plan)}

    @classmethod
    def array_specs(cls, plan: Plan) -> dict[str, dict]:
        """``output``; the region latents; the blended ``latent`` (latent grid, one chunk per output
        chunk); ``block_means`` with back-projection; the done flags."""
        grid, channels, chunk = plan.tile_grid(), plan.diffusion.latent_channels, plan.grid.chunk
        latent_shape = (grid.height, grid.width)
        latent_chunks = (min(chunk, grid.height), min(chunk, grid.width))
        specs = arrays.output_specs(plan)
        specs.update(arrays.regions_spec(plan, channels, scale=1))
        specs["latent"] = dict(
            shape=(channels, *latent_shape),
            chunks=(channels, *latent_chunks),
            dtype="float32",
            fill_value=float("nan"),
        )
        if plan.diffusion.back_project:
            count = plan.output.count
            specs["block_means"] = dict(
                shape=(count, *latent_shape),
                chunks=(count, *latent_chunks),
                dtype="float32",
                fill_value=float("nan"),
            )
        specs.update(arrays.done_specs(cls.unit_shapes_of(plan)))
        return specs

    # --- units ----------------------------------------------------------------------------------
    def denoise(self, index):
        region = self.grid.region_at(*index)
        latent = self.sample(region.canvas, region.tiles)
        rows, cols = region.extent.relative_to(region.canvas)
        arrays.write_extent(self.store, self.grid, index, latent[:, rows, cols])
        self.store.mark_done("denoise", index)

    def sample(self, canvas: Box, tiles: tuple[Box, ...]) -> np.ndarray:
        """The fused lockstep sampler over ``tiles`` of ``canvas`` -> the canvas's latent
        (float32, C x h x w)."""
        import torch

        from tiler.ldm.sampling import denoise_canvas

        with torch.inference_mode():
            condition = self.model.to_device(self.condition(canvas))
            latent = denoise_canvas(
                self.conditioning().predictor(self.model.unet_call),
                self.model.new_scheduler(),
                condition,
                canvas,
                tiles,
                self.model.latent_channels,
                self.options,
            )
        return latent.float().cpu().numpy()

    def condition(self, canvas: Box) -> np.ndarray:
        """The UNet's conditioning over the latent ``canvas`` (concatenated after the latent)."""
        raise NotImplementedError

    # --- text conditioning (plan.diffusion.text) and the noise level as class label --------------
    def encode_text(self, index):
        """Encode the prompts once for the whole run: with guidance the negative prompt's
        embeddings first, then the prompt's."""
        from tiler.ldm.text import encode_prompts

        text = self.plan.diffusion.text
        prompts = ([text.negative_prompt] if text.guided else []) + [text.prompt]
        embeddings = encode_prompts(
            self.plan.diffusion.model_dir,
            prompts,
            self.model.device,
            self.model.model.dtype,
            self.model.allow_pickle,
        )
        self._save_npy(self._text_path(), embeddings)
        self.store.mark_done("encode_text", index)

    def conditioning(self):
        """What every UNet call adds: the run's prompt embeddings, guidance scale, class label."""
        from tiler.ldm.guidance import Conditioning

        spec = self.plan.diffusion
        embeddings = None
        if spec.text is not None:
            path = self._text_path()
            embeddings = self.model.to_device(load_npy(path, path.stat().st_mtime_ns))
        return Conditioning(
            embeddings=embeddings,
            guidance_scale=spec.text.guidance_scale if spec.text else 1.0,
            class_label=spec.noise_level,
        )

    def _text_path(self) -> Path:
        return Path(self.store.path) / "text" / "embeddings.npy"

    def assemble(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        values, _ = arrays.blend_regions(
            self.store, self.grid, core, 1, self.plan.diffusion.latent_channels
        )
        arrays.write_core(self.store, "latent", core, values.astype(np.float32))
        self.store.mark_done("assemble", index)

    def decoded(self, core: Box, wanted=None) -> np.ndarray:
        """The decoded px (raster units, float32) over latent box ``core``, cropped to the raster;
        ``wanted(piece)``: decode only the decode tiles it accepts."""
        spec = self.plan.diffusion
        box = self.pixel_box(core).scale(self.plan.scale)
        pixels = tiled_pass(
            self.decoder(),
            self.read_latent,
            core,
            spec.decode_tile,
            spec.decode_halo,
            self.f * self.plan.scale,
            self.model.image_channels,
            self.model.decode_batch_size,
            wanted,
        )
        return self.denormalise(pixels[:, : box.y.size, : box.x.size])

    # --- pixels <-> model space -------------------------------------------------------------------
    def to_model_range(self, pixels: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Raster values in [-1, 1] with the plan's value range (no-data px neutral 0), a single
        band repeated into ``channels``; and the px validity (bands, h, w)."""
        valid = valid_mask(pixels, self.plan.input.nodata)
        unit = (np.where(valid, pixels, self.low).astype(np.float32) - self.low) / (
            self.high - self.low
        )
        image = np.where(valid, unit * 2 - 1, 0).astype(np.float32)
        if image.shape[0] == 1:
            image = np.repeat(image, channels, axis=0)
        return image, valid

    def denormalise(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded [-1, 1] pixels back to raster units; one band = the mean of the channels."""
        values = (pixels + np.float32(1)) * np.float32((self.high - self.low) / 2) + np.float32(
            self.low
        )
        if len(self.plan.bands) == 1:
            values = values.mean(axis=0, keepdims=True)
        return values

    def pixel_box(self, latent_box: Box) -> Box:
        """Input px of a latent box, clipped to the raster."""
        scaled = latent_box.scale(self.f)
        return Box(
            Span(scaled.y.start, min(scaled.y.stop, self.plan.input.height)),
            Span(scaled.x.start, min(scaled.x.stop, self.plan.input.width)),
        )

    def read_latent(self, box: Box) -> np.ndarray:
        """The blended latent over ``box``, reflected past the latent grid's edges."""
        latent = self.store.array("latent")
        return read_reflected(
            lambda rows, cols: latent[:, rows, cols], box, self.grid.height, self.grid.width
        )

    # --- shared GroupNorm statistics (plan.diffusion.shared_norm; tiler/ldm/norm_stats.py) --------
    def encoder_stats(self, index):
        """Measure the encoder's statistics over a sample of the images it will encode."""
        self._measure(
            "encoder", self.encoder_input, self.model.encode_pixels, self.model.encoder_norms
        )
        self.store.mark_done("encoder_stats", index)

    def decoder_stats(self, index):
        """Measure the decoder's statistics over a sample of the assembled latent."""
        self._measure(
            "decoder", self.read_latent, self.model.decode_latents, self.model.decoder_norms
        )
        self.store.mark_done("decoder_stats", index)

    def encoder_input(self, box: Box) -> np.ndarray:
        """The image the task encodes over latent ``box`` (tasks that encode images say)."""
        raise NotImplementedError(f"{type(self).__name__} encodes no images")

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.model.encode_pixels(images, norms=self.norms("encoder"))

    def decoder(self):
        """The decode call of ``tiled_pass``, with the run's statistics."""
        return functools.partial(self.model.decode_latents, norms=self.norms("decoder"))

    def _measure(self, part: str, read, call, norms: int):
        """Run ``call`` on the sample windows (``read`` of each) pooled as one image; save the
        statistics of its ``norms`` GroupNorms."""
        recorder = norm_stats.Recorder(norms)
        call(np.stack([read(box) for box in self.stats_sample()]), norms=recorder)
        self._save_npy(self._norms_path(part), recorder.as_array())

    def stats_sample(self) -> list[Box]:
        """The latent windows the statistics are measured on: a pure function of the plan."""
        side = min(STATS_SIDE, self.grid.height, self.grid.width)
        corners = norm_stats.sample_boxes(self.grid.height, self.grid.width, side, STATS_SAMPLE)
        return [Box(Span(y, y + side), Span(x, x + side)) for y, x in corners]

    def norms(self, part: str):
        """The run's statistics of ``part`` (encoder, decoder), or None without shared
        statistics."""
        if not self.plan.diffusion.shared_norm:
            return None
        path = self._norms_path(part)
        return load_npy(path, path.stat().st_mtime_ns)

    def _norms_path(self, part: str) -> Path:
        return Path(self.store.path) / "norms" / f"{part}.npy"

    @staticmethod
    def _save_npy(path: Path, table: np.ndarray):
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as file:  # np.save on a path would add ".npy"
            np.save(file, table)
        os.replace(partial, path)  # a reader never sees half a file
