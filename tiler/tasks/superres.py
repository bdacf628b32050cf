"""LDM 4x super-resolution on the engine.

For LDM-SR the latent grid IS the low-resolution pixel grid (VQ f=4, 4x), so tiles and regions are
counted in input px. Stages, each unit one region (or the chunk of its core):

denoise   read the region canvas's low-res pixels, normalise to [-1, 1] with the plan's value range,
          run the fused lockstep sampler, store the latent of the region's extent
assemble  blend the latents of the regions touching a chunk (region weights) -> ``latent``
decoder_stats  (``--decode-norm shared`` only; one unit) measure the decoder's GroupNorm statistics
          over a sample of the latent, so that every window decodes with the same ones
block_means  (``--back-project`` only) decode the chunk and store the mean of every f x f block of
          its px -> ``block_means`` (low-res, raster units)
decode    decode the chunk's latent in fixed-shape windows with a halo -> pixels (back-projected:
          plus the correction that the input and the block means within
          ``back_projection.HALO`` px of the chunk give, tiler/back_projection.py) -> ``output``
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import back_projection, engine, norm_stats
from ..first_stage import tiled_pass
from ..grid import Box, Span
from ..errors import BadParameter
from ..plan import DiffusionSpec, Plan
from ..raster import SourceReader, read_reflected, to_pixels, valid_mask

# stages that need the model (on a GPU where there is one); decoder_stats with --decode-norm shared,
# block_means with --back-project
MODEL_STAGES = ("denoise", "decoder_stats", "block_means", "decode")
# Shared GroupNorm statistics (tiler/norm_stats.py) are measured on STATS_SAMPLE windows of at most
# STATS_SIDE latent px pooled into one image: 4 x 32 x 32 latent px estimate a mean and variance per
# group well, and cost 4 small encodes and decodes (9 windows of 64 took 6 minutes on a 2-core CPU).
STATS_SAMPLE = 4
STATS_SIDE = 32
# auto = shared: on trained weights (the bundled SR VQ, with attention) one shared set of decoder
# GroupNorm statistics cut the decode seam index from 1.66 to 1.19 (benchmarks/README.md,
# trained_seams.py); without attention it also makes the tiled passes exact
DECODE_NORMS = {"auto": True, "window": False, "shared": True}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run, not what to compute: changing these never changes the output (on one device)."""

    device: str = "auto"
    batch_size: int | None = None  # tiles per UNet call; default by device
    compile: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class DiffusionOptions:
    """What the user asked for; None = the default (see DEFAULTS)."""

    steps: int | None = None
    eta: float | None = None
    seed: int | None = None
    sampler: str | None = None
    device: str = "auto"
    dtype: str | None = None
    value_range: str | None = None
    decode_tile: int | None = None
    decode_halo: int | None = None
    decode_norm: str | None = None  # auto, window, shared (DECODE_NORMS)
    back_project: bool | None = None  # super-resolution only (back_projection.ENABLED_BY_DEFAULT)
    allow_pickle: bool = False


# Grid defaults in latent px (= low-res px), from benchmarks/superres_gpu.py on an H100: tiles of 128
# keep the UNet efficient; an overlap of 16 blends tiles over 64 output px; regions of 1024 with a
# halo of 32 keep the computed area within about 1.8x the raster (region 512 and overlap 32 gave
# 2.6x); regions of 2048 compute 13% less on a 50000 px output (1.54x, benchmarks/region_size.py)
# but leave GPUs idle on mid-size rasters (a 20000 px output: 9 regions for 8 GPUs against 25), so
# the default stays 1024 and one GPU may pass --region 2048; decode windows of 128 + 2 x 16 cost
# 1.56x a halo-free decode (+32: 2.25x).
# Output chunks of 256 latent px (1024 output px) are the unit of decoding: small enough that two
# threads keep the GPU busy while one does a chunk's CPU work.
GRID_DEFAULTS = dict(tile=128, overlap=16, region=1024, halo=32, chunk=256)
DEFAULTS = dict(steps=50, eta=0.0, seed=0, sampler="ddim", decode_tile=128, decode_halo=16)


def diffusion_spec(model: str, info, bands: tuple[int, ...], scale: int | None, tile: int,
                   options: DiffusionOptions) -> tuple[DiffusionSpec, int]:
    """Check the model folder and the options against the input, without loading weights.
    Returns the spec and the model's scale (its first stage's downsampling factor)."""
    from .. import models

    model_dir = models.resolve_model_dir(model, allow_pickle=options.allow_pickle)
    models.check_sr_layout(model_dir)
    weights = models.check_weights(model_dir, allow_pickle=options.allow_pickle)
    vq = json.loads((model_dir / "vqvae" / "config.json").read_text())
    unet = json.loads((model_dir / "unet" / "config.json").read_text())
    factor = 2 ** (len(vq["block_out_channels"]) - 1)
    cond_channels = unet["in_channels"] - vq["latent_channels"]
    if scale is not None and scale != factor:
        raise BadParameter("--scale", f"{scale}: model {model} upscales by {factor}")
    if len(bands) not in (1, cond_channels):
        raise BadParameter("-b/--bidx", f"{len(bands)} bands selected ({','.join(map(str, bands))}); "
                           f"model {model} takes {cond_channels} bands (or 1, repeated): choose them "
                           f"with e.g. -b {','.join(map(str, range(1, cond_channels + 1)))}")
    multiple = 2 ** (len(unet["block_out_channels"]) - 1)
    if tile % multiple:
        raise BadParameter("--tile", f"{tile} is not a multiple of {multiple}, which the UNet of "
                           f"{model} needs")
    spec = sampling_spec(model_dir, weights, vq["latent_channels"], info, bands, options,
                         back_project=_back_project(options, factor, model))
    return spec, factor


def _back_project(options: DiffusionOptions, factor: int, model: str) -> bool:
    chosen = options.back_project
    if chosen is None:
        chosen = back_projection.ENABLED_BY_DEFAULT
    if chosen and factor % 2:  # the convergence of tiler/back_projection.py holds for even factors
        raise BadParameter("--back-project", f"model {model} upscales by {factor}; back-projection "
                           "needs an even factor (use --no-back-project)")
    return chosen


def sampling_spec(model_dir, weights: dict, latent_channels: int, info, bands: tuple[int, ...],
                  options: DiffusionOptions, back_project: bool = False) -> DiffusionSpec:
    """The options with their defaults, checked; device and dtype resolved; the value range.
    ``back_project``: the
    super-resolution's choice (its own check, in ``diffusion_spec``)."""
    from .. import models
    from ..raster import parse_value_range, value_range

    chosen = {key: DEFAULTS[key] if getattr(options, key) is None else getattr(options, key)
              for key in DEFAULTS}
    _check_positive(chosen)
    models.check_sampler(chosen["sampler"])  # fit to the model's schedule is checked at load
    device = models.resolve_device(options.device)
    dtype = str(models.resolve_dtype(options.dtype, device)).removeprefix("torch.")
    limits = (parse_value_range(options.value_range) if options.value_range
              else value_range(info, bands))
    if (options.decode_norm or "auto") not in DECODE_NORMS:
        raise BadParameter("--decode-norm", f"{options.decode_norm!r}: expected "
                           f"{', '.join(DECODE_NORMS)}")
    shared_norm = DECODE_NORMS[options.decode_norm or "auto"]
    return DiffusionSpec(
        model_dir=str(model_dir.resolve()), weights=_weights_identity(weights.values()),
        dtype=dtype, value_range=limits, latent_channels=latent_channels, shared_norm=shared_norm,
        back_project=back_project, **chosen)


def _check_positive(chosen: dict):
    for key, low in (("steps", 1), ("decode_tile", 1), ("eta", 0), ("decode_halo", 0)):
        if chosen[key] < low:
            raise BadParameter(f"--{key.replace('_', '-')}", f"{chosen[key]} is below {low}")


def _weights_identity(files) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of every weight file: a changed model invalidates a workdir."""
    identity = []
    for first in files:
        for path in sorted(first.parent.glob("*" + first.suffix)):
            stat = path.stat()
            identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(identity)


def array_specs(plan: Plan) -> dict[str, dict]:
    channels = plan.diffusion.latent_channels
    chunk = plan.grid.chunk
    height, width = plan.input.height, plan.input.width
    specs = engine.output_specs(plan)
    specs.update(engine.regions_spec(plan, channels, scale=1))
    specs["latent"] = dict(shape=(channels, height, width),
                           chunks=(channels, min(chunk, height), min(chunk, width)),
                           dtype="float32", fill_value=float("nan"))
    if plan.diffusion.back_project:
        specs["block_means"] = dict(shape=(plan.output.count, height, width),
                                    chunks=(plan.output.count, min(chunk, height), min(chunk, width)),
                                    dtype="float32", fill_value=float("nan"))
    specs.update(engine.done_specs(unit_shapes(plan)))
    return specs


def stages(plan: Plan) -> tuple[str, ...]:
    """With shared GroupNorm statistics a one-unit ``decoder_stats`` stage measures them before
    decode; with back-projection a ``block_means`` stage decodes every chunk once before decode
    (its neighbours' block means decide a chunk's correction)."""
    spec = plan.diffusion
    return (("denoise", "assemble") + (("decoder_stats",) if spec.shared_norm else ())
            + (("block_means",) if spec.back_project else ()) + ("decode",))


def unit_names(plan: Plan) -> dict[str, str]:
    return {"denoise": "region", "assemble": "chunk", "decoder_stats": "sample",
            "block_means": "chunk", "decode": "chunk"}


def unit_shapes(plan: Plan, stage_names: tuple[str, ...] | None = None) -> dict[str, tuple[int, int]]:
    """The unit grid of each of ``stage_names`` (default: this module's stages of ``plan``):
    denoise one unit per region, assemble and decode one per output chunk, the statistics stages
    one unit."""
    grid = plan.tile_grid()
    chunks = grid.chunk_shape(plan.grid.chunk)
    shapes = {"denoise": grid.region_shape, "assemble": chunks, "block_means": chunks,
              "decode": chunks}
    return {stage: shapes.get(stage, (1, 1)) for stage in stage_names or stages(plan)}


class SuperResolutionTask:
    """Runs one unit of each stage; holds the model and the source reader for the whole run."""

    def __init__(self, plan: Plan, store, reader: SourceReader, model: "ModelRunner",
                 batch_size: int | None):
        self.plan = plan
        self.store = store
        self.reader = reader
        self.model = model
        self.grid = plan.tile_grid()
        self.stages = stages(plan)
        self.unit_shapes = unit_shapes(plan)
        self.unit_names = unit_names(plan)
        from ..sample import SamplingOptions

        spec = plan.diffusion
        self.options = SamplingOptions(steps=spec.steps, eta=spec.eta, seed=spec.seed,
                                       batch_size=batch_size or model.default_batch_size,
                                       overlap=plan.grid.overlap)
        self.low, self.high = spec.value_range

    # --- units -------------------------------------------------------------------------------
    def denoise(self, index):
        import torch

        from ..sample import denoise_canvas

        region = self.grid.region_at(*index)
        with torch.inference_mode():
            condition = self.model.to_device(self.condition(region.canvas))
            latent = denoise_canvas(self.model.unet_call, self.model.new_scheduler(), condition,
                                    region.canvas, region.tiles, self.model.latent_channels,
                                    self.options)
        rows, cols = region.extent.relative_to(region.canvas)
        engine.write_extent(self.store, self.grid, index, latent[:, rows, cols].float().cpu().numpy())
        self.store.mark_done("denoise", index)

    def assemble(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        values, _ = engine.blend_regions(self.store, self.grid, core, 1, self.plan.diffusion.latent_channels)
        engine.write_core(self.store, "latent", core, values.astype(np.float32))
        self.store.mark_done("assemble", index)

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        values = self.decoded(core)
        if self.plan.diffusion.back_project:
            values = values + self.correction(core)  # float64
        valid = self.output_validity(core)
        engine.write_core(self.store, "output", core.scale(self.plan.scale),
                          to_pixels(values, valid, self.plan.output.dtype, self.plan.output_fill,
                                    self.plan.output.nodata))
        self.store.mark_done("decode", index)

    def decoded(self, core: Box) -> np.ndarray:
        """The decoded px of latent box ``core`` in raster units (float32)."""
        spec = self.plan.diffusion
        pixels = tiled_pass(self.decoder(), self.read_latent, core, spec.decode_tile,
                            spec.decode_halo, self.plan.scale, self.model.image_channels,
                            self.model.decode_batch_size)
        return self.denormalise(pixels)

    # --- back-projection (plan.diffusion.back_project; tiler/back_projection.py) -----------------
    def block_means(self, index):
        """Store the f x f block means of the chunk's decoded px. ``decode`` decodes the chunk
        again: two decodes per chunk, where decoding it grown by the halo would take four times the
        windows with the default grid (the halo reaches into every neighbouring decode tile)."""
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        means = back_projection.block_mean(self.decoded(core), self.plan.scale)
        engine.write_core(self.store, "block_means", core, means.astype(np.float32))
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
        means = read_reflected(lambda rows, cols: stored[:, rows, cols], grown,
                               self.plan.input.height, self.plan.input.width)
        residual = np.where(valid, lowres.astype(np.float64) - means, 0.0)
        return back_projection.correction(residual, valid, self.plan.scale,
                                          margin=back_projection.HALO)

    # --- pixels <-> model space ----------------------------------------------------------------
    def condition(self, box: Box) -> np.ndarray:
        """Low-res pixels of ``box`` in [-1, 1] (no-data pixels neutral 0), as the model's
        channels: a single band is repeated into every channel."""
        return self.to_model_range(self.reader.read(box), self.model.cond_channels)[0]

    def to_model_range(self, pixels: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Raster values in [-1, 1] with the plan's value range (no-data px neutral 0), a single
        band repeated into ``channels``; and the px validity (bands, h, w)."""
        valid = valid_mask(pixels, self.plan.input.nodata)
        unit = (np.where(valid, pixels, self.low).astype(np.float32) - self.low) / (self.high - self.low)
        image = np.where(valid, unit * 2 - 1, 0).astype(np.float32)
        if image.shape[0] == 1:
            image = np.repeat(image, channels, axis=0)
        return image, valid

    def denormalise(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded [-1, 1] pixels back to raster units; one band = the mean of the channels."""
        values = (pixels + np.float32(1)) * np.float32((self.high - self.low) / 2) + np.float32(self.low)
        if len(self.plan.bands) == 1:
            values = values.mean(axis=0, keepdims=True)
        return values

    def output_validity(self, core: Box) -> np.ndarray:
        """Output px have data where their (nearest) input px has data."""
        valid = valid_mask(self.reader.read(core), self.plan.input.nodata)
        scale = self.plan.scale
        return np.repeat(np.repeat(valid, scale, axis=1), scale, axis=2)

    # --- shared GroupNorm statistics (plan.diffusion.shared_norm; tiler/norm_stats.py) -----------
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

    def read_latent(self, box: Box) -> np.ndarray:
        """The blended latent over ``box``, reflected past the raster edges."""
        latent = self.store.array("latent")
        return read_reflected(lambda rows, cols: latent[:, rows, cols], box,
                              self.plan.input.height, self.plan.input.width)


class ModelRunner:
    """The loaded model as the sampler and the decoder call it: device placement, dtype,
    channels_last, optional torch.compile, inference mode, one scheduler per region."""

    def __init__(self, model, sampler: str, compile: bool, shared_norm: bool = False):
        import torch

        self.model = model
        self.device = model.device
        self.sampler = sampler
        self.latent_channels = model.latent_channels
        self.cond_channels = model.cond_channels
        self.image_channels = int(model.vqvae.config.out_channels)
        self.channels_last = self.device.type == "cuda"
        self.unet = torch.compile(model.unet) if compile else model.unet
        # shared statistics switch per call and per thread: the first stage stays eager then
        self.encoder_norms = norm_stats.install(model.vqvae.encoder) if shared_norm else 0
        self.decoder_norms = norm_stats.install(model.vqvae.decoder) if shared_norm else 0
        compile_first_stage = compile and not shared_norm
        self.vq_decode = torch.compile(model.vqvae.decode) if compile_first_stage else model.vqvae.decode
        self.vq_encode = torch.compile(model.vqvae.encode) if compile_first_stage else model.vqvae.encode
        self.default_batch_size = 16 if self.device.type == "cuda" else 4
        self.decode_batch_size = 16 if self.device.type == "cuda" else 4  # windows per decode call

    @classmethod
    def load(cls, plan: Plan, runtime: RuntimeOptions) -> "ModelRunner":
        """The model of ``plan``, loaded (and compiled) once per process for consecutive runs that
        use it: a workflow's files, or the plans a Dask worker serves one after the other."""
        spec = plan.diffusion
        return _loaded_runner(plan.task == "upscale", spec.model_dir, spec.weights, runtime.device,
                              spec.dtype, runtime.allow_pickle, spec.sampler, runtime.compile,
                              spec.shared_norm)

    def limit_threads(self, threads: int):
        if self.device.type == "cpu":
            import torch

            torch.set_num_threads(threads)

    def new_scheduler(self):
        return self.model.make_scheduler(self.sampler)

    def to_device(self, array: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def _prepare(self, batch):
        import torch

        batch = batch.to(self.model.dtype)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def unet_call(self, inputs, timestep):
        import torch

        with torch.inference_mode():
            return self.unet(self._prepare(inputs), timestep).sample

    def encode_pixels(self, pixels: np.ndarray, norms=None) -> np.ndarray:
        """(n, channels, h*f, w*f) pixels in [-1, 1] -> (n, C, h, w) latents, not quantized (the
        inpainting model's conditioning, as CompVis encodes it). ``norms``: the run's shared
        GroupNorm statistics, or a ``norm_stats.Recorder`` measuring them (None: per call)."""
        import torch

        with torch.inference_mode(), norm_stats.using(norms):
            latents = self.vq_encode(self._prepare(self.to_device(pixels))).latents
        return latents.float().cpu().numpy()

    def decode_latents(self, latents: np.ndarray, norms=None) -> np.ndarray:
        """(n, C, h, w) latents -> (n, channels, h*f, w*f) pixels in about [-1, 1], float32.
        The VQ decoder quantizes to its codebook first, as the LDM-SR pipeline does. ``norms`` as
        for ``encode_pixels``."""
        import torch

        with torch.inference_mode(), norm_stats.using(norms):
            pixels = self.vq_decode(self._prepare(self.to_device(latents))).sample
        return pixels.float().cpu().numpy()


@functools.lru_cache(maxsize=1)  # one model held per process: loading another releases it
def _loaded_runner(super_resolution: bool, model_dir: str, weights: tuple, device: str, dtype: str,
                   allow_pickle: bool, sampler: str, compile: bool, shared_norm: bool) -> ModelRunner:
    """``weights``: the weight files' (name, size, mtime), so a model folder changed on disk is
    loaded again."""
    from ..models import load_ldm_model, load_sr_model

    load = load_sr_model if super_resolution else load_ldm_model
    model = load(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    return ModelRunner(model, sampler, compile, shared_norm)


@functools.lru_cache(maxsize=8)
def _load_norms(path: Path, mtime_ns: int) -> np.ndarray:
    """Read once per process (the file's mtime in the key: a rerun's new statistics are read)."""
    return np.load(path)


TASK = SuperResolutionTask  # what tasks.build_task makes for a plan of this module
