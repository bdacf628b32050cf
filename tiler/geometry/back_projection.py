"""Back-projection: make an upscaled image consistent with its low-resolution input, so that the
mean of every f x f block of the output equals the input px under it ("spectral back-projection"
in ESA OpenSR). Pure numpy, no I/O; arrays are (bands, h, w), low-res (h, w) under high-res
(h*f, w*f).

Operators: A, the f x f block mean (high-res -> low-res); U, bilinear upsampling (px centres, zero
beyond the array); P, a sharpening of the low-res grid, (-1/4, 3/2, -1/4) along each axis.
Iterative back-projection corrects an image X with input L as

    X + U S,   S = sum_k tau P r_k,   r_0 = v (L - A X),   r_{k+1} = v (r_k - tau A U P r_k)

where r_k is the block-mean residual after k corrections and v the valid low-res px (nodata px have
no residual and pull on nothing). The correction U S is piecewise bilinear: smooth, no blocks.

Convergence: for any even f, A U is the low-res convolution (1/8, 3/4, 1/8) per axis, so A U P is a
symmetric convolution whose symbol lies in [1, (9/8)^2]; tau = 2 / (1 + (9/8)^2) maps it into
[0.883, 1.117]. The l1 norm of the kernel of (I - tau A U P)^K, which bounds the remaining residual
relative to the largest initial one, is 0.12 for K = 1 and 2.7e-6 for K = ITERATIONS = 6. On the
unbounded grid, masking by v takes a principal submatrix of that symmetric operator, whose
eigenvalues stay in the interval, so the residual converges with nodata px too, at least 8x per
iteration in the l2 norm (tests/test_consistency.py measures the largest one).

Reach: P and A U each reach 1 low-res px, so r_k at a px depends on r_0 within 2k px and the
correction within HALO = 2 * ITERATIONS px. An array covering a core grown by HALO gives the core
exactly the correction of the whole raster: that is how tiled outputs equal whole ones.
"""

from __future__ import annotations

import numpy as np

# The default of ``tiler upscale --back-project`` (LDM super-resolution only); one edit switches it.
ENABLED_BY_DEFAULT = True
ITERATIONS = 6
REACH = 2  # low-res px one iteration reaches (P: 1, A U: 1)
HALO = REACH * ITERATIONS  # low-res px around a core that decide its correction

SHARPEN = (-0.25, 1.5, -0.25)  # P along one axis
AREA_OF_UPSAMPLE = (0.125, 0.75, 0.125)  # A U along one axis, for every even f
RELAXATION = 2 / (1 + (9 / 8) ** 2)  # tau: centres tau A U P's symbol on 1


def block_mean(image: np.ndarray, f: int) -> np.ndarray:
    """The mean of every f x f block (bands, h*f, w*f) -> (bands, h, w), float64. The blocks' px
    are summed in one fixed order, so a block's mean does not depend on the array around it."""
    total = np.zeros(image[..., ::f, ::f].shape, dtype=np.float64)
    for dy in range(f):
        for dx in range(f):
            total += image[..., dy::f, dx::f]
    return total / (f * f)


def upsample(lowres: np.ndarray, f: int) -> np.ndarray:
    """Bilinear upsampling by f with px centres aligned (like GDAL's and torch's half-pixel
    convention), zero beyond the array: (bands, h, w) -> (bands, h*f, w*f)."""
    return _upsample_axis(_upsample_axis(lowres, f, -1), f, -2)


def _upsample_axis(values: np.ndarray, f: int, axis: int) -> np.ndarray:
    values = np.moveaxis(values, axis, -1)
    before, after = _neighbours(values)
    phases = []
    for phase in range(f):
        offset = (phase + 0.5) / f - 0.5  # of the px centre from its low-res px's, in low-res px
        neighbour = before if offset < 0 else after
        phases.append((1 - abs(offset)) * values + abs(offset) * neighbour)
    stacked = np.stack(phases, axis=-1).reshape(*values.shape[:-1], -1)
    return np.moveaxis(stacked, -1, axis)


def _neighbours(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each px's neighbour before and after it along the last axis, zero beyond the array."""
    zero = np.zeros_like(values[..., :1])
    return (
        np.concatenate([zero, values[..., :-1]], axis=-1),
        np.concatenate([values[..., 1:], zero], axis=-1),
    )


def convolve(lowres: np.ndarray, taps: tuple[float, float, float]) -> np.ndarray:
    """A separable symmetric 3-tap convolution of the low-res grid, zero beyond the array."""
    result = lowres
    for axis in (-1, -2):
        values = np.moveaxis(result, axis, -1)
        before, after = _neighbours(values)
        result = np.moveaxis(taps[0] * before + taps[1] * values + taps[2] * after, -1, axis)
    return result


def correction(
    residual: np.ndarray, valid: np.ndarray, f: int, margin: int = 0, iterations: int = ITERATIONS
) -> np.ndarray:
    """What back-projection adds to an image whose block-mean residual is ``residual`` (input -
    block means; zero where ``valid`` is False): (bands, h, w) -> the high-res correction of the
    array less ``margin`` low-res px on every side. With ``margin`` >= HALO that part is exactly the
    correction the whole raster would give it."""
    residual = np.where(valid, residual, 0.0)
    total = np.zeros_like(residual)
    for _ in range(iterations):
        step = RELAXATION * convolve(residual, SHARPEN)
        total += step
        residual = np.where(valid, residual - convolve(step, AREA_OF_UPSAMPLE), 0.0)
    kept = _crop(total, max(margin - 1, 0))  # one px of context for the bilinear edge
    return _crop(upsample(kept, f), f * min(margin, 1))


def _crop(values: np.ndarray, margin: int) -> np.ndarray:
    if margin == 0:
        return values
    return values[..., margin:-margin, margin:-margin]


def back_project(
    image: np.ndarray, lowres: np.ndarray, valid: np.ndarray, f: int, iterations: int = ITERATIONS
) -> np.ndarray:
    """``image`` (bands, h*f, w*f) corrected so that its block means match ``lowres`` (bands, h, w)
    at the ``valid`` px, the array taken alone: the px around it count as nodata (one ring of them
    holds the part of the correction that spills over the edge)."""
    residual = np.pad(np.where(valid, lowres - block_mean(image, f), 0.0), [(0, 0), (1, 1), (1, 1)])
    around = np.pad(valid, [(0, 0), (1, 1), (1, 1)])
    return image + correction(residual, around, f, margin=1, iterations=iterations)
