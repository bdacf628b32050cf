"""Training windows: random square windows read on demand from rasters of any size.

Only the windows are read (never a whole raster), each raster's values are mapped to [-1, 1] with
the value range ``tiler upscale`` would use for it (``--range`` or the 0.1/99.9 percentiles of the
whole raster), windows holding nodata are skipped, and held-out areas are never read: a window that
touches one is rejected before reading. Each batch is a pure function of (seed, step), so a resumed
run draws the same windows as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiler.errors import BadParameter, InputError
from tiler.geometry.grid import Box, Span
from tiler.raster.sources import RasterInfo, describe, parse_bands, value_range
from tiler.raster.values import valid_mask

RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt", ".img")
MODEL_CHANNELS = 3
MAX_REJECTIONS = 2000  # consecutive rejected windows before giving up


def find_rasters(sources) -> list[str]:
    """The raster files of ``sources`` (files as given; folders: their raster files, sorted)."""
    found: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        elif path.exists():
            found.append(str(path))
        else:
            raise InputError(
                f"{source}: no such file or folder; expected rasters or folders of rasters"
            )
    if not found:
        raise InputError(
            f"{', '.join(map(str, sources)) or '(none given)'}: no rasters to train on "
            f"(expected files ending in {', '.join(RASTER_SUFFIXES)})"
        )
    return found


def parse_hold_out(text: str) -> tuple[float, float, float, float]:
    """``--hold-out LEFT,BOTTOM,RIGHT,TOP`` in the rasters' CRS units (pixel columns/rows for
    rasters without georeferencing)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BadParameter(
            "hold_out",
            f"{text!r} is not LEFT,BOTTOM,RIGHT,TOP (four numbers in the rasters' CRS units)",
        )
    return values  # type: ignore[return-value]


@dataclass
class TrainingRaster:
    """One raster to draw windows from: its bands, value range and held-out pixel boxes."""

    info: RasterInfo
    bands: tuple[int, ...]
    low: float
    high: float
    held_out: list[Box]
    dataset: object = field(default=None, repr=False)

    def fits(self, size: int) -> bool:
        return self.info.height >= size and self.info.width >= size

    def has_free_window(self, size: int) -> bool:
        """Whether some window of ``size`` px avoids every held-out box. A free region of window
        origins has a corner on the raster's edges or a box's edges, so testing those is exact."""
        ys = {0, self.info.height - size} | {
            c for h in self.held_out for c in (h.y.stop, h.y.start - size)
        }
        xs = {0, self.info.width - size} | {
            c for h in self.held_out for c in (h.x.stop, h.x.start - size)
        }
        return any(
            not self.touches_held_out(Box(Span(y, y + size), Span(x, x + size)))
            for y in ys
            if 0 <= y <= self.info.height - size
            for x in xs
            if 0 <= x <= self.info.width - size
        )

    def touches_held_out(self, box: Box) -> bool:
        return any(
            box.y.start < h.y.stop
            and h.y.start < box.y.stop
            and box.x.start < h.x.stop
            and h.x.start < box.x.stop
            for h in self.held_out
        )

    def read(self, box: Box) -> np.ndarray:
        """The raw values of ``box`` (bands, h, w)."""
        from rasterio.windows import Window

        if self.dataset is None:
            import rasterio

            self.dataset = rasterio.open(self.info.path)
        if self.touches_held_out(box):  # the guarantee, whatever the caller
            raise AssertionError(f"{self.info.path}: window {box} touches a held-out area")
        window = Window(box.x.start, box.y.start, box.x.size, box.y.size)
        return self.dataset.read(list(self.bands), window=window)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """Raster values -> [-1, 1] as the model's channels (one band repeated)."""
        unit = (pixels.astype(np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        image = unit * 2 - 1
        if image.shape[0] == 1:
            image = np.repeat(image, MODEL_CHANNELS, axis=0)
        return image


class WindowSampler:
    """Random normalised windows (n, 3, size, size) from the training rasters."""

    def __init__(self, rasters: list[TrainingRaster], seed: int):
        self.rasters = rasters
        self.seed = seed
        self.read_boxes: list[tuple[str, Box]] = []  # every window read, for checks and tests

    @classmethod
    def open(
        cls, sources, bands: str | None, given_range, hold_out, sizes: tuple[int, ...], seed: int
    ) -> WindowSampler:
        """Describe and check every raster: band count, size against the largest window, value
        range."""
        rasters = [
            _training_raster(path, bands, given_range, hold_out) for path in find_rasters(sources)
        ]
        largest = max(sizes)
        usable = [r for r in rasters if r.fits(largest)]
        if not usable:
            sizes_found = ", ".join(
                f"{r.info.path} ({r.info.width} x {r.info.height})" for r in rasters
            )
            raise InputError(
                f"{sizes_found}: smaller than the training window of {largest} px; "
                "expected rasters at least that large (or a smaller --window)"
            )
        free = [r for r in usable if r.has_free_window(largest)]
        if not free:
            raise InputError(
                f"{', '.join(r.info.path for r in usable)}: no window of {largest} px "
                "lies outside the held-out areas; hold out less, or add rasters"
            )
        return cls(free, seed)

    def batch(self, step: int, stream: int, count: int, size: int) -> np.ndarray:
        """``count`` windows of ``size`` px for training step ``step`` of stream ``stream`` (one
        stream per stage): a pure function of (seed, stream, step)."""
        rng = np.random.default_rng([self.seed, stream, step])
        return np.stack([self._window(rng, size) for _ in range(count)])

    def _window(self, rng: np.random.Generator, size: int) -> np.ndarray:
        weights = np.array([r.info.width * r.info.height for r in self.rasters], dtype=float)
        for _ in range(MAX_REJECTIONS):
            raster = self.rasters[rng.choice(len(self.rasters), p=weights / weights.sum())]
            y = int(rng.integers(0, raster.info.height - size + 1))
            x = int(rng.integers(0, raster.info.width - size + 1))
            box = Box(Span(y, y + size), Span(x, x + size))
            if raster.touches_held_out(box):
                continue
            pixels = raster.read(box)
            self.read_boxes.append((raster.info.path, box))
            if not valid_mask(pixels, raster.info.nodata).all():
                continue  # windows with nodata are skipped
            return _augment(raster.normalise(pixels), rng)
        raise InputError(
            f"{', '.join(r.info.path for r in self.rasters)}: found no window of {size} "
            f"px without nodata outside the held-out areas in {MAX_REJECTIONS} tries"
        )


def _training_raster(path: str, bands_text, given_range, hold_out) -> TrainingRaster:
    info = describe(path)
    bands = parse_bands(bands_text, info)
    if len(bands) not in (1, MODEL_CHANNELS):
        raise BadParameter(
            "bands",
            f"{path} gives {len(bands)} bands; the models take "
            f"{MODEL_CHANNELS} bands (or 1, repeated): choose them with -b, e.g. 3,2,1",
        )
    low, high = given_range if given_range is not None else value_range(info, bands)
    return TrainingRaster(info, bands, low, high, _held_out_boxes(info, hold_out))


def _held_out_boxes(info: RasterInfo, hold_out) -> list[Box]:
    """The pixel boxes (rounded outwards) of the held-out bounds that overlap the raster."""
    from rasterio.windows import from_bounds

    boxes = []
    for left, bottom, right, top in hold_out:
        window = from_bounds(left, bottom, right, top, transform=info.affine)
        rows = (math.floor(window.row_off), math.ceil(window.row_off + window.height))
        cols = (math.floor(window.col_off), math.ceil(window.col_off + window.width))
        y0, y1 = sorted(rows)
        x0, x1 = sorted(cols)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, info.height), min(x1, info.width)
        if y0 < y1 and x0 < x1:
            boxes.append(Box(Span(y0, y1), Span(x0, x1)))
    return boxes


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random element of the square's symmetry group (rotations and flips)."""
    image = np.rot90(image, int(rng.integers(4)), axes=(1, 2))
    if rng.integers(2):
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def describe_sources(sampler: WindowSampler) -> list[str]:
    """One line per raster for the model card."""
    return [
        f"{os.path.basename(r.info.path)}: {r.info.width} x {r.info.height} px, bands "
        f"{','.join(map(str, r.bands))}, range {r.low:g}..{r.high:g}, "
        f"{len(r.held_out)} held-out area(s)"
        for r in sampler.rasters
    ]
