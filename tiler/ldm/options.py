"""What an LDM run is asked for (``DiffusionOptions``) and how it runs (``RuntimeOptions``), their
one set of defaults (read by the CLI's help too), and ``sampling_spec``: the options checked and
resolved into the plan's ``DiffusionSpec``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from tiler.errors import BadParameter
from tiler.ldm.devices import resolve_device, resolve_dtype
from tiler.ldm.folders import ModelFolder, read_scheduler_config
from tiler.ldm.samplers import check_sampler
from tiler.raster.sources import value_range
from tiler.raster.values import parse_value_range
from tiler.workdir.plan import DiffusionSpec, TextSpec

log = logging.getLogger("tiler")

# auto = shared: on trained weights (the bundled SR VQ, with attention) one shared set of decoder
# GroupNorm statistics cut the decode seam index from 1.66 to 1.19 (benchmarks/README.md,
# trained_seams.py); without attention it also makes the tiled passes exact
DECODE_NORMS = {"auto": True, "window": False, "shared": True}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run, not what to compute: changing these never changes the output (on one device)."""

    @classmethod
    def from_keys(cls, keys: Mapping) -> RuntimeOptions:
        return _from_keys(cls, keys)

    device: str = "auto"
    batch_size: int | None = None  # tiles per UNet call; default by device
    compile: bool = False
    allow_pickle: bool = False
    threads: int | None = None  # torch threads per model worker; default OMP_NUM_THREADS or cores


@dataclass(frozen=True)
class DiffusionOptions:
    """What the user asked for; None = the default (see DEFAULTS)."""

    @classmethod
    def from_keys(cls, keys: Mapping) -> DiffusionOptions:
        return _from_keys(cls, keys)

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
    # text-conditioned models only (a StableDiffusionUpscalePipeline or -InpaintPipeline folder)
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None  # default: the pipeline's (folders.PIPELINES)
    noise_level: int | None = None  # the x4 upscaler's low-res augmentation


# Tiles per UNet call by device type (never changes the result)
BATCH_SIZES = {"cuda": 16, "cpu": 4}
DEFAULTS = dict(steps=50, eta=0.0, seed=0, sampler="ddim", decode_tile=128, decode_halo=16)


def _from_keys(cls, keys: Mapping):
    """Options from flat keys named as the fields (the CLI's parameters, a workflow step's keys):
    the CLI and the workflow build them here alike; an absent or None key takes the default."""
    return cls(
        **{
            field.name: keys[field.name]
            for field in dataclasses.fields(cls)
            if keys.get(field.name) is not None
        }
    )


def sampling_spec(
    folder: ModelFolder,
    info,
    bands: tuple[int, ...],
    options: DiffusionOptions,
    back_project: bool = False,
) -> DiffusionSpec:
    """The options with their defaults, checked; device and dtype resolved; the value range.
    ``back_project``: the super-resolution's choice (its own check, in ``diffusion_spec``)."""
    chosen = {
        key: DEFAULTS[key] if getattr(options, key) is None else getattr(options, key)
        for key in DEFAULTS
    }
    _check_positive(chosen)
    trained = int(read_scheduler_config(folder.path).get("num_train_timesteps", 1000))
    if chosen["steps"] > trained:
        raise BadParameter(
            "steps",
            f"{chosen['steps']}: the model's noise schedule has {trained} steps; "
            f"expected at most {trained}",
        )
    check_sampler(chosen["sampler"])  # fit to the model's schedule is checked at load
    device = resolve_device(options.device)
    dtype = str(resolve_dtype(options.dtype, device)).removeprefix("torch.")
    limits = (
        parse_value_range(options.value_range) if options.value_range else value_range(info, bands)
    )
    if (options.decode_norm or "auto") not in DECODE_NORMS:
        raise BadParameter(
            "decode_norm", f"{options.decode_norm!r}: expected {', '.join(DECODE_NORMS)}"
        )
    shared_norm = DECODE_NORMS[options.decode_norm or "auto"]
    return DiffusionSpec(
        model_dir=str(folder.path.resolve()),
        weights=_weights_identity(folder.weights.values()),
        dtype=dtype,
        value_range=limits,
        latent_channels=folder.latent_channels,
        shared_norm=shared_norm,
        back_project=back_project,
        text=text_spec(folder, options),
        noise_level=noise_level(folder, options),
        **chosen,
    )


def text_spec(folder: ModelFolder, options: DiffusionOptions) -> TextSpec | None:
    """The prompts and guidance scale of a text-conditioned model (the pipeline's default scale;
    an empty prompt when none is given); None for other models, which refuse them."""
    given = {
        key: getattr(options, key)
        for key in ("prompt", "negative_prompt", "guidance_scale")
        if getattr(options, key) is not None
    }
    if not folder.text_conditioned:
        if given:
            option = next(iter(given))
            raise BadParameter(
                option,
                f"{getattr(options, option)!r}: model {folder.path} ({folder.kind}) has no text "
                f"conditioning; expected no {option} (only text-conditioned models take one)",
            )
        return None
    scale = given.get("guidance_scale", folder.pipeline.guidance_scale)
    if not math.isfinite(scale) or scale < 1:
        raise BadParameter(
            "guidance_scale",
            f"{scale}: expected a finite number >= 1 (1 turns classifier-free guidance off)",
        )
    text = TextSpec(
        prompt=given.get("prompt", ""),
        negative_prompt=given.get("negative_prompt", ""),
        guidance_scale=float(scale),
    )
    if text.negative_prompt and not text.guided:
        log.warning("--negative-prompt is unused with --guidance-scale 1 (no guidance)")
    from tiler.ldm.text import warn_dropped_words

    warn_dropped_words(
        folder.path, {"prompt": text.prompt, "negative_prompt": text.negative_prompt}
    )
    return text


def noise_level(folder: ModelFolder, options: DiffusionOptions) -> int | None:
    """The x4 upscaler's low-res noise level (its default 20), checked against the model's
    maximum; None for other models, which refuse one."""
    highest = folder.max_noise_level
    if highest is None:
        if options.noise_level is not None:
            raise BadParameter(
                "noise_level",
                f"{options.noise_level}: model {folder.path} ({folder.kind}) takes no noise "
                "level; expected none (only the x4 upscaler, a StableDiffusionUpscalePipeline, "
                "takes one)",
            )
        return None
    level = folder.pipeline.noise_level if options.noise_level is None else options.noise_level
    if isinstance(level, bool) or not float(level).is_integer() or not 0 <= level <= highest:
        raise BadParameter(
            "noise_level",
            f"{level}: expected a whole number from 0 to the model's max_noise_level, {highest}",
        )
    return int(level)


# (low, high) of each numeric sampling option; None: unbounded
LIMITS = {"steps": (1, None), "decode_tile": (1, None), "decode_halo": (0, None), "eta": (0, 1)}


def _check_positive(chosen: dict):
    """Every numeric option finite and in its range (before any work)."""
    for key, (low, high) in LIMITS.items():
        value = chosen[key]
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            expected = f"{low}..{high}" if high is not None else f">= {low}"
            raise BadParameter(key, f"{value}: expected a finite number {expected}")


def _weights_identity(files) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of every weight file: a changed model invalidates a workdir."""
    identity = []
    for first in files:
        for path in sorted(first.parent.glob("*" + first.suffix)):
            stat = path.stat()
            identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(identity)
