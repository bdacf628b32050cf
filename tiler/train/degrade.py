"""What the conditioning looks like at inference, made from clean windows.

Super-resolution: the low-resolution image is the high-resolution window averaged over f x f
blocks, as a sensor integrates light over a coarser pixel (optionally blurred first, and with
noise added). Inpainting: random cloud-like masks (thresholded smooth noise, soft-edged blobs)
and gaps (stripes and rectangles, as scan-line failures and missing tiles leave them).
"""

from __future__ import annotations

import numpy as np


def area_downsample(images, factor: int):
    """(n, c, h, w) -> (n, c, h/f, w/f): the mean of each f x f block (torch)."""
    import torch.nn.functional as F

    return F.avg_pool2d(images, factor)


def gaussian_blur(images, sigma: float):
    """Separable Gaussian blur of (n, c, h, w) with reflected edges (torch); sigma 0: unchanged."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def low_resolution(images, factor: int, blur: float = 0.0, noise: float = 0.0, generator=None):
    """The low-resolution conditioning of high-resolution ``images`` in [-1, 1] (torch)."""
    import torch

    low = area_downsample(gaussian_blur(images, blur), factor)
    if noise > 0:
        low = low + noise * torch.randn(low.shape, generator=generator, dtype=low.dtype)
    return low


def cloud_masks(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """(count, size, size) bool masks, True = to fill, covering about 5 to 60% of each window:
    clouds (smooth noise above a threshold) or gaps (stripes, rectangles), or both."""
    masks = np.zeros((count, size, size), dtype=bool)
    for index in range(count):
        kind = rng.integers(3)
        if kind in (0, 2):
            masks[index] |= _clouds(rng, size)
        if kind in (1, 2):
            masks[index] |= _gaps(rng, size)
        if not masks[index].any():  # at least something to fill
            masks[index] |= _rectangle(rng, size)
    return masks


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth noise (sum of a few octaves of bilinearly enlarged random grids) thresholded at a
    random cover fraction."""
    field = np.zeros((size, size), dtype=np.float32)
    for cells, amplitude in ((3, 1.0), (6, 0.5), (12, 0.25)):
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        field += amplitude * _enlarge(grid, size)
    cover = rng.uniform(0.05, 0.6)
    return field > np.quantile(field, 1 - cover)


def _enlarge(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation of ``grid`` over a size x size square."""
    positions = np.linspace(0, grid.shape[0] - 1, size)
    low = np.floor(positions).astype(int).clip(0, grid.shape[0] - 2)
    frac = (positions - low).astype(np.float32)
    rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def _gaps(rng: np.random.Generator, size: int) -> np.ndarray:
    """Scan-line stripes (a random direction and period) or a missing rectangle."""
    if rng.integers(2):
        return _rectangle(rng, size)
    period = int(rng.integers(8, max(9, size // 2)))
    width = int(rng.integers(2, max(3, period // 2)))
    offset = int(rng.integers(period))
    lines = ((np.arange(size) + offset) % period) < width
    mask = np.broadcast_to(lines[:, None], (size, size))
    return np.ascontiguousarray(mask if rng.integers(2) else mask.T)


def _rectangle(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    height, width = (int(rng.integers(size // 8, size // 2 + 1)) for _ in range(2))
    y, x = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    mask[y : y + height, x : x + width] = True
    return mask
