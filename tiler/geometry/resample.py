"""Classical upscalers (nearest, bicubic, lanczos): the baseline to compare LDM results against and
the instrument that proves the engine exact.

Each is a separable resampler (two small matmuls per tile, numpy/BLAS) applied to one tile read
with ``context`` extra input px on every
side, so a tile's output equals the whole-raster result (reflect boundary) exactly: the engine's
tiling and blending are then the only thing a test of these models measures. Pixels without data
never contribute: values are resampled by normalised convolution (data * mask / mask) and output
pixels whose nearest input pixel has no data get no data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tiler.errors import BadParameter


def cubic_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 (Catmull-Rom) is GDAL's and PIL's choice."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def lanczos_kernel(x: np.ndarray, lobes: int = 3) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x) < lobes, np.sinc(x) * np.sinc(x / lobes), 0.0)


@dataclass(frozen=True)
class Kernel:
    name: str
    function: Callable[[np.ndarray], np.ndarray] | None  # None: nearest neighbour
    support: int  # input px on each side that one output px reads

    @property
    def context(self) -> int:
        return self.support


KERNELS = {
    "nearest": Kernel("nearest", None, 0),
    "bicubic": Kernel("bicubic", cubic_kernel, 2),
    "lanczos": Kernel("lanczos", lanczos_kernel, 3),
}


@lru_cache(maxsize=16)
def resampling_matrix(kernel_name: str, size: int, scale: int) -> np.ndarray:
    """(size * scale, size + 2 * context) float32 matrix: output px from a context-padded input
    row, for a kernel with a function (nearest is a plain repeat).

    Output px j has its centre at input coordinate (j + 0.5) / scale - 0.5 (pixel-is-area, as GDAL).
    Rows are normalised to sum to one.
    """
    kernel = KERNELS[kernel_name]
    context = kernel.context
    centres = (np.arange(size * scale) + 0.5) / scale - 0.5 + context
    inputs = np.arange(size + 2 * context)
    matrix = kernel.function(centres[:, None] - inputs[None, :])
    matrix /= matrix.sum(axis=1, keepdims=True)
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


class ClassicalUpscaler:
    """Upscales context-padded tiles by an integer ``scale`` with one separable kernel."""

    def __init__(self, name: str, scale: int):
        if name not in KERNELS:
            raise BadParameter(
                "model", f"{name!r} is not a classical model; expected one of {', '.join(KERNELS)}"
            )
        if not 1 <= scale <= 16:
            raise BadParameter("scale", f"{scale} is out of range; expected an integer in 1..16")
        self.kernel = KERNELS[name]
        self.scale = scale

    @property
    def context(self) -> int:
        return self.kernel.context

    def upscale(self, pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bands, h + 2c, w + 2c) pixels and validity -> (bands, h*s, w*s) float32 values and
        validity (an array that broadcasts to the values' shape)."""
        c, s = self.context, self.scale
        all_valid = bool(valid.all())
        if all_valid:  # the common case: a broadcastable True instead of an upsampled mask
            valid_out = np.ones((1, 1, 1), dtype=bool)
        else:
            core_valid = valid[:, c : valid.shape[1] - c, c : valid.shape[2] - c]
            valid_out = np.repeat(np.repeat(core_valid, s, axis=1), s, axis=2)
        if self.kernel.function is None:
            core = pixels[:, c : pixels.shape[1] - c, c : pixels.shape[2] - c]
            values = np.repeat(np.repeat(core, s, axis=1), s, axis=2).astype(np.float32)
            return values, valid_out
        rows = resampling_matrix(self.kernel.name, pixels.shape[1] - 2 * c, s)
        cols = resampling_matrix(self.kernel.name, pixels.shape[2] - 2 * c, s)
        data = (
            pixels.astype(np.float32)
            if all_valid
            else np.where(valid, pixels, 0).astype(np.float32)
        )
        values = rows @ data @ cols.T
        if not all_valid:
            weight = rows @ valid.astype(np.float32) @ cols.T
            values /= np.maximum(weight, 1e-6)
        return values, valid_out
