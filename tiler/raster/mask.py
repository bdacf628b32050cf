"""The area to fill (inpainting): where it comes from, its alignment with the input, dilation, and
which latent tiles touch it.

A mask is read by boxes of input px, like the input itself, so it costs bounded memory at any size:

- ``file``: a raster aligned with the input: the same size and transform, or the same CRS and
  covering the input's footprint (then resampled onto the input's grid, nearest neighbour, through
  a GDAL warped view). Non-zero = fill. Its own nodata counts as "keep".
- ``nodata``: the input's missing pixels: its nodata value, NaN, or its alpha / internal mask
  (GDAL's dataset mask; 0 = missing) in any of the processed bands.
- ``band``: a band of the input itself (non-zero = fill), e.g. a cloud mask shipped as band 5.

``dilate`` grows the area by that many px (a disk), reading that much context around each box.
``touched_tiles`` finds the tiles of a latent grid that touch the (dilated) area, chunk by chunk:
only those are computed, so cost follows the masked area.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tiler.errors import BadParameter, InputError
from tiler.geometry.grid import Box, Span, TileGrid
from tiler.raster.sources import (
    PerThreadHandles,
    RasterInfo,
    describe,
    open_raster,
    read_reflected,
)

MaskSource = Literal["file", "nodata", "band"]
SCAN_BLOCK = 2048  # input px per side read at a time when scanning the whole mask


@dataclass(frozen=True)
class MaskSpec:
    source: MaskSource
    path: str | None = None  # source "file"
    band: int | None = None  # source "band" (1-based, of the input)
    dilate: int = 0  # px


def choose_mask(
    path,
    nodata: bool,
    band: int | None,
    dilate: int = 0,
    names=("mask", "mask_nodata", "mask_band"),
) -> MaskSpec:
    """The mask of exactly one source given: a file, the input's nodata, a band of the input.
    ``names``: how the caller spells the three (the CLI's flags, the API's keywords)."""
    given = [name for name, value in zip(names, (path, nodata, band)) if value]
    if len(given) != 1:
        raise BadParameter(
            "mask",
            f"{' and '.join(given) or 'none'} given; expected exactly one of {', '.join(names)}",
        )
    source = ("file", "nodata", "band")[names.index(given[0])]
    return MaskSpec(source, str(path) if path is not None else None, band, dilate)


def check_mask(spec: MaskSpec, info: RasterInfo, bands: tuple[int, ...]) -> None:
    """Refuse a mask that cannot be read onto the input's grid, before anything runs."""
    if spec.dilate < 0:
        raise BadParameter("dilate", f"{spec.dilate} is negative; expected >= 0 px")
    if spec.source == "band" and not (spec.band and 1 <= spec.band <= info.count):
        raise BadParameter(
            "mask_band",
            f"band {spec.band} is out of range; {info.path} has "
            f"{info.count} band(s), numbered 1..{info.count}",
        )
    if spec.source == "band" and spec.band in bands:
        raise BadParameter(
            "mask_band",
            f"band {spec.band} is also an image band (-b "
            f"{','.join(map(str, bands))}); choose image bands without it",
        )
    if spec.source == "file":
        _check_alignment(describe(spec.path), info)


def _check_alignment(mask: RasterInfo, info: RasterInfo) -> None:
    same_grid = (mask.width, mask.height) == (
        info.width,
        info.height,
    ) and mask.affine.almost_equals(info.affine)
    if same_grid:
        return
    if not (mask.crs_wkt and info.crs_wkt):
        raise InputError(
            f"{mask.path}: mask is {mask.width} x {mask.height} px with transform "
            f"{tuple(round(v, 6) for v in mask.transform)}; expected the input's "
            f"{info.width} x {info.height} px and transform "
            f"{tuple(round(v, 6) for v in info.transform)} (or a georeferenced mask "
            "in the input's CRS covering it)"
        )
    from rasterio.crs import CRS

    if CRS.from_wkt(mask.crs_wkt) != CRS.from_wkt(info.crs_wkt):
        raise InputError(
            f"{mask.path}: mask CRS {CRS.from_wkt(mask.crs_wkt).to_string()} differs from "
            f"the input's {CRS.from_wkt(info.crs_wkt).to_string()}; expected the same CRS "
            "(reproject the mask first, e.g. with gdalwarp)"
        )
    if not _covers(mask, info):
        raise InputError(
            f"{mask.path}: mask does not cover the input's footprint; expected a mask "
            "covering all of the input"
        )


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    corners = [info.affine @ (x, y) for x in (0, info.width) for y in (0, info.height)]
    xs, ys = zip(*corners)
    return min(xs), min(ys), max(xs), max(ys)


def _covers(mask: RasterInfo, info: RasterInfo) -> bool:
    left, bottom, right, top = _bounds(mask)
    in_left, in_bottom, in_right, in_top = _bounds(info)
    tolerance = 1e-6 * max(abs(right - left), abs(top - bottom), 1.0)
    return (
        left <= in_left + tolerance
        and bottom <= in_bottom + tolerance
        and right >= in_right - tolerance
        and top >= in_top - tolerance
    )


class MaskReader:
    """Reads the (dilated) mask over boxes of input px as booleans (True = fill); one GDAL handle
    per thread."""

    def __init__(self, spec: MaskSpec, info: RasterInfo, bands: tuple[int, ...]):
        self.spec = spec
        self.info = info
        self.bands = list(bands)
        self._handles = PerThreadHandles(self._open)
        self._disk = _disk(spec.dilate)

    def read(self, box: Box) -> np.ndarray:
        """(h, w) bool over ``box``; px past the raster edges read reflected, like the input."""
        grown = box.grow(self.spec.dilate)
        raw = read_reflected(
            lambda rows, cols: self._read_block(rows, cols)[None],
            grown,
            self.info.height,
            self.info.width,
        )[0]
        if self.spec.dilate:
            from scipy.ndimage import binary_dilation

            raw = binary_dilation(raw, structure=self._disk)
        rows, cols = box.relative_to(grown)
        return raw[rows, cols]

    def _read_block(self, rows: slice, cols: slice) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        dataset = self._handles.get()
        if self.spec.source == "nodata":
            masks = dataset.read_masks(self.bands, window=window)
            missing = (masks == 0).any(axis=0)
            if np.issubdtype(np.dtype(self.info.dtype), np.floating):  # NaN without a nodata value
                missing |= np.isnan(dataset.read(self.bands, window=window)).any(axis=0)
            return missing
        band = self.spec.band if self.spec.source == "band" else 1
        values = dataset.read(band, window=window, masked=self.spec.source == "file")
        if np.ma.isMaskedArray(values):
            return np.ma.filled(values != 0, False)
        return values != 0

    def _open(self):
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.vrt import WarpedVRT

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if self.spec.source != "file":
                return open_raster(self.info.path)
            dataset = open_raster(self.spec.path)
        mask = describe(self.spec.path)
        if (mask.width, mask.height) == (
            self.info.width,
            self.info.height,
        ) and mask.affine.almost_equals(self.info.affine):
            return dataset
        from rasterio.enums import Resampling

        # the mask resampled onto the input's grid (nearest: a mask stays a mask)
        return WarpedVRT(
            dataset,
            transform=self.info.affine,
            width=self.info.width,
            height=self.info.height,
            resampling=Resampling.nearest,
        )

    def close(self):
        self._handles.close()


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


@dataclass(frozen=True)
class MaskCoverage:
    masked_px: int  # input px to fill (after dilation)
    total_px: int
    tiles: frozenset[tuple[int, int]]  # (row, col) of the latent tiles touching the area
    tile_count: int  # tiles of the whole grid

    @property
    def fraction(self) -> float:
        return self.masked_px / self.total_px


def touched_tiles(reader: MaskReader, grid: TileGrid, factor: int, margin: int = 0) -> MaskCoverage:
    """Scan the mask block by block: how many px it fills, and which tiles of ``grid`` (in latent
    px, ``factor`` input px each) lie within ``margin`` latent px of it."""
    info = reader.info
    block = max(factor, SCAN_BLOCK // factor * factor)  # whole latent px per block
    tiles: set[tuple[int, int]] = set()
    masked = 0
    for y in range(0, info.height, block):
        for x in range(0, info.width, block):
            box = Box(Span(y, min(y + block, info.height)), Span(x, min(x + block, info.width)))
            area = reader.read(box)
            masked += int(area.sum())
            if area.any():
                tiles |= _tiles_touching(to_latent(area, factor), box, grid, factor, margin)
    return MaskCoverage(
        masked,
        info.width * info.height,
        frozenset(tiles),
        grid.rows.tile_count * grid.cols.tile_count,
    )


def to_latent(area: np.ndarray, factor: int) -> np.ndarray:
    """True where any of a latent px's ``factor`` x ``factor`` input px is masked."""
    height, width = -(-area.shape[0] // factor), -(-area.shape[1] // factor)
    padded = np.zeros((height * factor, width * factor), dtype=bool)
    padded[: area.shape[0], : area.shape[1]] = area
    return padded.reshape(height, factor, width, factor).any(axis=(1, 3))


def _tiles_touching(
    latent: np.ndarray, box: Box, grid: TileGrid, factor: int, margin: int
) -> set[tuple[int, int]]:
    """Tiles with a masked latent px of this block within ``margin`` of them."""
    top, left = box.y.start // factor, box.x.start // factor
    block = Box(Span(top, top + latent.shape[0]), Span(left, left + latent.shape[1]))
    reach = block.grow(margin)
    found = set()
    for ty in grid.rows.tiles_touching(reach.y):
        for tx in grid.cols.tiles_touching(reach.x):
            near = (
                Box(grid.rows.tile_span(ty), grid.cols.tile_span(tx))
                .grow(margin)
                .intersection(block)
            )
            if near is not None:
                rows, cols = near.relative_to(block)
                if latent[rows, cols].any():
                    found.add((ty, tx))
    return found
