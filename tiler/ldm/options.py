"""What an LDM run is asked for (``DiffusionOptions``) and how it runs (``RuntimeOptions``), their
one set of defaults (read by the CLI's help too), and ``sampling_spec``: the options checked and
resolved into the plan's ``DiffusionSpec``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from tiler.errors import BadParameter
from tiler.ldm.devices import resolve_device, resolve_dtype
from tiler.ldm.folders import read_scheduler_config
from tiler.ldm.samplers import check_sampler
from tiler.raster.sources import value_range
from tiler.raster.values import parse_value_range
from tiler.workdir.plan import DiffusionSpec

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
    model_dir,
    weights: dict,
    latent_channels: int,
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
    trained = int(read_scheduler_config(model_dir).get("num_train_timesteps", 1000))
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
        model_dir=str(model_dir.resolve()),
        weights=_weights_identity(weights.values()),
        dtype=dtype,
        value_range=limits,
        latent_channels=latent_channels,
        shared_norm=shared_norm,
        back_project=back_project,
        **chosen,
    )


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
