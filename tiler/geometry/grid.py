"""Pure geometry of a run: tiles and regions on the latent grid. No I/O.

The latent grid is anchored at raster pixel (0, 0). Tiles have one constant shape and are spaced by
``stride``; tiles that run past the raster's end are filled by reflection (never shrunk), so every
tile costs the same and every tile sees the same kind of input. Regions are fixed blocks of
``region`` latent px (their *core*); a region is computed from every tile that touches its *extent*
(core grown by ``halo``, clipped to the raster), and its *canvas* is the union of those tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Half-open interval [start, stop) on one axis."""

    start: int
    stop: int

    def __post_init__(self):
        if self.stop < self.start:
            raise ValueError(f"span stop {self.stop} is before start {self.start}")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def scale(self, factor: int) -> Span:
        return Span(self.start * factor, self.stop * factor)

    def relative_to(self, outer: Span) -> slice:
        """The slice that cuts this span out of an array covering ``outer``."""
        return slice(self.start - outer.start, self.stop - outer.start)


@dataclass(frozen=True)
class Box:
    """A rectangle on a grid: rows ``y`` by columns ``x``."""

    y: Span
    x: Span

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.size, self.x.size)

    def scale(self, factor: int) -> Box:
        return Box(self.y.scale(factor), self.x.scale(factor))

    def relative_to(self, outer: Box) -> tuple[slice, slice]:
        return (self.y.relative_to(outer.y), self.x.relative_to(outer.x))

    def intersection(self, other: Box) -> Box | None:
        y0, y1 = max(self.y.start, other.y.start), min(self.y.stop, other.y.stop)
        x0, x1 = max(self.x.start, other.x.start), min(self.x.stop, other.x.stop)
        if y0 >= y1 or x0 >= x1:
            return None
        return Box(Span(y0, y1), Span(x0, x1))

    def grow(self, margin: int) -> Box:
        return Box(
            Span(self.y.start - margin, self.y.stop + margin),
            Span(self.x.start - margin, self.x.stop + margin),
        )


@dataclass(frozen=True)
class AxisTiling:
    """Tiles and regions along one axis of ``length`` latent px."""

    length: int
    tile: int
    stride: int
    region: int
    halo: int

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"axis length must be >= 1, got {self.length}")
        if not 1 <= self.stride <= self.tile:
            raise ValueError(f"stride must be in 1..tile ({self.tile}), got {self.stride}")
        if self.region < 1:
            raise ValueError(f"region must be >= 1, got {self.region}")
        if self.halo < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")

    @property
    def tile_count(self) -> int:
        if self.length <= self.tile:
            return 1
        return math.ceil((self.length - self.tile) / self.stride) + 1

    def tile_span(self, k: int) -> Span:
        start = k * self.stride
        return Span(start, start + self.tile)

    @property
    def region_count(self) -> int:
        return math.ceil(self.length / self.region)

    def region_core(self, j: int) -> Span:
        return Span(j * self.region, min(self.length, (j + 1) * self.region))

    def region_extent(self, j: int) -> Span:
        core = self.region_core(j)
        return Span(max(0, core.start - self.halo), min(self.length, core.stop + self.halo))

    def tiles_touching(self, span: Span) -> range:
        """Indices of the tiles that overlap ``span``."""
        first = max(0, (span.start - self.tile) // self.stride + 1)
        last = min(self.tile_count - 1, math.ceil(span.stop / self.stride) - 1)
        return range(first, last + 1)

    def regions_touching(self, span: Span) -> range:
        """Indices of the regions whose extent overlaps ``span``."""
        first = max(0, (span.start - self.halo) // self.region)
        last = min(self.region_count - 1, (span.stop - 1 + self.halo) // self.region)
        return range(first, last + 1)


@dataclass(frozen=True)
class Region:
    """One unit of work: the tiles that cover ``extent``; it owns the output of ``core``."""

    index: tuple[int, int]
    core: Box
    extent: Box
    canvas: Box
    tiles: tuple[Box, ...]


@dataclass(frozen=True)
class TileGrid:
    """Tiles and regions over a ``height`` x ``width`` latent grid."""

    height: int
    width: int
    tile: int
    overlap: int
    region: int
    halo: int

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"grid size must be at least 1 x 1, got {self.width} x {self.height}")
        if self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(
                f"overlap must be in 0..{self.tile - 1} (tile - 1), got {self.overlap}"
            )

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    # Plain properties, not functools.cached_property: caching writes the instance's __dict__ from
    # the worker threads that share the grid, and on CPython 3.11 a process that did so crashed
    # now and then in the garbage collector at exit (SIGSEGV on this dict's freed values, ~1 run
    # in 20). An AxisTiling costs a microsecond to build.
    @property
    def rows(self) -> AxisTiling:
        return AxisTiling(self.height, self.tile, self.stride, self.region, self.halo)

    @property
    def cols(self) -> AxisTiling:
        return AxisTiling(self.width, self.tile, self.stride, self.region, self.halo)

    @property
    def region_shape(self) -> tuple[int, int]:
        return (self.rows.region_count, self.cols.region_count)

    @property
    def tile_count(self) -> int:
        return self.rows.tile_count * self.cols.tile_count

    def region_at(self, iy: int, ix: int) -> Region:
        extent = Box(self.rows.region_extent(iy), self.cols.region_extent(ix))
        tile_rows = self.rows.tiles_touching(extent.y)
        tile_cols = self.cols.tiles_touching(extent.x)
        tiles = tuple(
            Box(self.rows.tile_span(ty), self.cols.tile_span(tx))
            for ty in tile_rows
            for tx in tile_cols
        )
        canvas = Box(
            Span(tiles[0].y.start, tiles[-1].y.stop), Span(tiles[0].x.start, tiles[-1].x.stop)
        )
        core = Box(self.rows.region_core(iy), self.cols.region_core(ix))
        return Region((iy, ix), core, extent, canvas, tiles)

    def regions(self):
        ny, nx = self.region_shape
        for iy in range(ny):
            for ix in range(nx):
                yield self.region_at(iy, ix)

    def chunk_shape(self, chunk: int) -> tuple[int, int]:
        """(rows, cols) of ``chunk``-sized blocks anchored at (0, 0)."""
        return (math.ceil(self.height / chunk), math.ceil(self.width / chunk))

    def chunk_box(self, index: tuple[int, int], chunk: int) -> Box:
        """Block ``index`` of the ``chunk``-sized grid, clipped to the raster."""
        iy, ix = index
        return Box(
            Span(iy * chunk, min(self.height, (iy + 1) * chunk)),
            Span(ix * chunk, min(self.width, (ix + 1) * chunk)),
        )

    def computed_tile_count(self) -> int:
        """Tile evaluations summed over all regions (tiles shared by two regions count twice)."""
        per_row = [
            len(self.rows.tiles_touching(self.rows.region_extent(j)))
            for j in range(self.rows.region_count)
        ]
        per_col = [
            len(self.cols.tiles_touching(self.cols.region_extent(j)))
            for j in range(self.cols.region_count)
        ]
        return sum(per_row) * sum(per_col)

    def overhead_factor(self) -> float:
        """Latent px computed (all tile evaluations) per latent px of the raster."""
        return self.computed_tile_count() * self.tile * self.tile / (self.height * self.width)
