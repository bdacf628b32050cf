"""Seam report: are tile, region and decode boundaries visible in an output raster?

For every boundary line of the run's geometry (tile edges, region core starts and decode tile
edges, in output px) the
mean absolute step across the line is compared with the same measure on a reference line half a
stride away, where no boundary is. The ratio is the *seam index*: 1 = invisible, above 1 = steps at
the boundaries, below 1 = smoothed (blurred) bands; ``seam_strength = |log(index)|`` (0 = invisible)
is what to compare between runs.

Definitions (all positions in output px = latent px x scale):

- tile boundaries: every tile start ``k * stride`` and tile end ``k * stride + tile`` strictly
inside
  the raster (not 0, not the raster's edge), per axis; region boundaries: region core starts
  ``j * region`` for ``j >= 1``; decode boundaries (LDM runs): the edges ``k * decode_tile`` of the
  decode tiles, where one decoder window's kept core meets the next (the first stage decodes each
  window alone, so per-window GroupNorm statistics and attention can leave steps there). A line can
  be of several kinds.
- the gradient of a vertical line at column ``x`` is the mean over rows and bands of
  ``|I[:, :, x] - I[:, :, x - 1]|`` (float64; pairs where either pixel is nodata or NaN are
  skipped);
  horizontal lines likewise over rows ``y - 1``, ``y``.
- the reference of a line at ``x`` is the line at ``x + (stride // 2) * scale`` (a whole number of
  latent px, so output pixels keep their phase against the latent grid; equal to
  ``stride * scale // 2`` for even strides), or ``x - ...`` if that is outside the raster or on a
  boundary, or else the nearest column to those that is neither.
- the index of a kind (tile, region, decode, all) = mean gradient over all valid pairs of its lines
/ mean
  gradient over all valid pairs of their references.
- each line is split into segments of about ``SEGMENT`` px; a segment's ratio is its boundary
  gradient / its reference gradient; the heat map draws each segment coloured by its ratio.

Memory stays bounded whatever the raster's size: only 2 px thin strips of at most ``BLOCK`` px along
the line are read (rasterio windows, or slices of a Zarr output's ``data`` array), block by block
across all lines so that the reader's block cache serves neighbouring lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tiler.errors import InputError
from tiler.geometry.grid import TileGrid
from tiler.quality.heatmap import write_heatmap
from tiler.quality.outputs import open_output, plan_of

if TYPE_CHECKING:
    from tiler.workdir.plan import Plan


SEGMENT = 256  # output px per heat-map segment (about)

BLOCK = 4096  # output px along a line per read

KINDS = ("tile", "region", "decode", "all")

VISIBLE = (
    0.2  # seam strength (|ln index|) from which a report suggests a remedy: steps 22% stronger
)

REMEDIES = {  # kind -> what reduces steps at its boundaries
    "tile": "a larger --overlap blends neighbouring tiles over more px",
    "region": "a larger --halo gives each region more context beyond its core",
    "decode": "a larger --decode-halo gives each decoder window more context (or a larger "
    "--decode-tile, fewer window edges; or --decode-norm shared, one set of GroupNorm "
    "statistics for every window)",
}


# --- geometry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeamGeometry:
    """The tile geometry to check: sizes in latent px, ``scale`` output px per latent px.

    ``region=None``: no region boundaries (e.g. a raster from another tool described by hand);
    ``decode_tile=None``: no decode boundaries (classical models, or not described)."""

    tile: int
    overlap: int
    scale: int
    region: int | None = None
    decode_tile: int | None = None

    def __post_init__(self):
        if self.tile < 1 or self.scale < 1:
            raise ValueError(
                f"tile and scale must be >= 1, got tile {self.tile}, scale {self.scale}"
            )
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in 0..{self.tile - 1}, got {self.overlap}")
        for name in ("region", "decode_tile"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @classmethod
    def from_plan(cls, plan) -> SeamGeometry:
        # output px per latent px: the upscale factor times the latent factor (inpainting: f)
        decode_tile = plan.diffusion.decode_tile if plan.diffusion is not None else None
        return cls(
            tile=plan.grid.tile,
            overlap=plan.grid.overlap,
            scale=plan.scale * plan.factor,
            region=plan.grid.region,
            decode_tile=decode_tile,
        )

    def tile_grid(self, width: int, height: int) -> TileGrid:
        """The latent tile grid of a ``width`` x ``height`` px output (sizes rounded up)."""
        latent_h, latent_w = math.ceil(height / self.scale), math.ceil(width / self.scale)
        return TileGrid(
            latent_h, latent_w, self.tile, self.overlap, self.region or max(latent_h, latent_w), 0
        )

    def boundaries(self, width: int, height: int) -> dict[str, dict[int, frozenset[str]]]:
        """Per orientation ("vertical": columns x, "horizontal": rows y), output px position ->
        the kinds of boundary there ({"tile"}, {"region"}, {"decode"} or several)."""
        grid = self.tile_grid(width, height)
        return {
            "vertical": self._axis(grid.cols, width),
            "horizontal": self._axis(grid.rows, height),
        }

    def _axis(self, axis, length_px: int) -> dict[int, frozenset[str]]:
        kinds: dict[int, set[str]] = {}
        for k in range(axis.tile_count):
            span = axis.tile_span(k)
            for edge in (span.start, span.stop):
                kinds.setdefault(edge, set()).add("tile")
        if self.region is not None:
            for j in range(1, axis.region_count):
                kinds.setdefault(j * self.region, set()).add("region")
        if (
            self.decode_tile is not None
        ):  # decode tiles sit on a grid anchored at 0 (tiler/ldm/first_stage.py)
            for edge in range(self.decode_tile, axis.length, self.decode_tile):
                kinds.setdefault(edge, set()).add("decode")
        lines = {edge * self.scale: frozenset(names) for edge, names in kinds.items()}
        return {pos: names for pos, names in sorted(lines.items()) if 0 < pos < length_px}


def _reference(position: int, offset: int, length: int, taken) -> int | None:
    """The reference line for ``position``: ``offset`` after it, else before it, else the nearest
    free line to either; ``None`` if every line of the axis is a boundary."""
    free = lambda p: 1 <= p < length and p not in taken  # noqa: E731 (pair p-1, p inside)
    for candidate in (position + offset, position - offset):
        if free(candidate):
            return candidate
    for distance in range(1, length):
        for candidate in (
            position + offset + distance,
            position + offset - distance,
            position - offset + distance,
            position - offset - distance,
        ):
            if free(candidate):
                return candidate
    return None


# --- report
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One piece of a boundary line: from (x0, y0) to (x1, y1) in output px (x1 or y1 exclusive)."""

    orientation: str  # "vertical" (a column boundary at x0) or "horizontal" (a row boundary at y0)
    kinds: tuple[str, ...]
    x0: int
    y0: int
    x1: int
    y1: int
    ratio: float  # boundary gradient / reference gradient (nan: no valid pixels)
    boundary_gradient: float
    reference_gradient: float

    @property
    def position(self) -> tuple[int, int]:
        """The segment's centre (x, y), output px."""
        return ((self.x0 + self.x1) // 2, (self.y0 + self.y1) // 2)

    @property
    def strength(self) -> float:
        return _strength(self.ratio)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kinds"] = list(self.kinds)
        data["position"] = list(self.position)
        return {key: _finite(value) for key, value in data.items()}


@dataclass
class SeamReport:
    path: str
    width: int  # output px
    height: int
    geometry: SeamGeometry
    index: dict[str, float]  # kind (tile, region, all) -> seam index (1 = invisible)
    strength: dict[str, float]  # kind -> |log(index)| (0 = invisible)
    boundaries: dict[str, int]  # kind -> number of boundary lines (both orientations)
    boundary_gradient: dict[str, float]  # kind -> mean |step| across its lines
    reference_gradient: dict[str, float]  # kind -> mean |step| across their reference lines
    worst_segments: list[Segment] = field(default_factory=list)  # largest |log(ratio)| first
    segments: int = 0  # number of segments measured
    heatmap: str | None = None

    def remedies(self) -> list[str]:
        """One line per kind whose boundaries show steps (index above 1 by VISIBLE in log): what
        to change."""
        return [
            f"steps at {kind} boundaries (index {self.index[kind]:.2f}): {REMEDIES[kind]}"
            for kind in REMEDIES
            if self.strength[kind] >= VISIBLE and self.index[kind] > 1
        ]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "size": [self.width, self.height],
            "geometry": asdict(self.geometry) | {"stride": self.geometry.stride},
            "index": {k: _finite(v) for k, v in self.index.items()},
            "strength": {k: _finite(v) for k, v in self.strength.items()},
            "boundaries": dict(self.boundaries),
            "boundary_gradient": {k: _finite(v) for k, v in self.boundary_gradient.items()},
            "reference_gradient": {k: _finite(v) for k, v in self.reference_gradient.items()},
            "segments": self.segments,
            "worst_segments": [segment.to_dict() for segment in self.worst_segments],
            "remedies": self.remedies(),
            "heatmap": self.heatmap,
        }


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(boundary_sum, boundary_count, reference_sum, reference_count):
    """Mean boundary gradient / mean reference gradient (nan without valid pixels on either)."""
    if boundary_count == 0 or reference_count == 0:
        return math.nan, math.nan, math.nan
    b, r = float(boundary_sum / boundary_count), float(reference_sum / reference_count)
    if r == 0:
        return (1.0 if b == 0 else math.inf), b, r
    return b / r, b, r


def _strength(ratio: float) -> float:
    if math.isnan(ratio):
        return math.nan
    if ratio == 0 or math.isinf(ratio):
        return math.inf
    return abs(math.log(ratio))


def _step_sums(strip: np.ndarray, vertical: bool, nodata) -> tuple[np.ndarray, np.ndarray]:
    """Sum over bands of |step| across a 2 px strip, and the number of valid pairs, per position
    along the line. ``strip``: (bands, n, 2) for vertical lines, (bands, 2, n) for horizontal."""
    strip = strip.astype(np.float64)
    if vertical:
        before, after = strip[:, :, 0], strip[:, :, 1]
    else:
        before, after = strip[:, 0, :], strip[:, 1, :]
    valid = ~(np.isnan(before) | np.isnan(after))
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= (before != nodata) & (after != nodata)
    step = np.where(valid, np.abs(after - before), 0.0)
    return step.sum(axis=0), valid.sum(axis=0)


def _measure(reader, lines: dict[str, list[int]], segment_edges: dict[str, np.ndarray]):
    """Per orientation and line position: (sum of |steps|, count of valid pairs) per segment."""
    sums, counts = {}, {}
    for orientation, positions in lines.items():
        vertical = orientation == "vertical"
        length = reader.height if vertical else reader.width
        edges = segment_edges[orientation]
        nseg = len(edges) - 1
        for pos in positions:
            sums[orientation, pos] = np.zeros(nseg)
            counts[orientation, pos] = np.zeros(nseg, dtype=np.int64)
        # Outer loop along the lines, inner across them: neighbouring lines share file blocks.
        for start in range(0, length, BLOCK):
            stop = min(length, start + BLOCK)
            along = slice(start, stop)
            seg = np.searchsorted(edges, np.arange(start, stop), side="right") - 1
            for pos in positions:
                across = slice(pos - 1, pos + 1)
                strip = reader.read(along, across) if vertical else reader.read(across, along)
                step, valid = _step_sums(strip, vertical, reader.nodata)
                sums[orientation, pos] += np.bincount(seg, weights=step, minlength=nseg)
                counts[orientation, pos] += np.bincount(seg, weights=valid, minlength=nseg).astype(
                    np.int64
                )
    return sums, counts


def _segment_edges(length: int) -> np.ndarray:
    count = max(1, round(length / SEGMENT))
    return np.unique(np.linspace(0, length, count + 1).round().astype(np.int64))


# --- the report
# ------------------------------------------------------------------------------------
def seam_report(
    output_path, plan: Plan | SeamGeometry | None = None, heatmap_path=None
) -> SeamReport:
    """Measure the seams of ``output_path`` (GeoTIFF, COG or Zarr output).

    ``plan``: a ``Plan`` or a ``SeamGeometry``; default: the plan in the output's TILER_PLAN
    metadata.
    ``heatmap_path``: if given, write the heat map PNG there (replacing any file)."""
    path = str(output_path)
    reader = open_output(path)
    try:
        if plan is None:
            plan = plan_of(reader, path)
        geometry = plan if isinstance(plan, SeamGeometry) else SeamGeometry.from_plan(plan)
        if not isinstance(plan, SeamGeometry):
            expected = (plan.output.width, plan.output.height)
            if (reader.width, reader.height) != expected:
                raise InputError(
                    f"{path}: raster is {reader.width} x {reader.height} px; its plan "
                    f"expects {expected[0]} x {expected[1]} px"
                )
        report, table = _report(reader, path, geometry)
    finally:
        reader.close()
    if heatmap_path is not None:
        write_heatmap(heatmap_path, report.width, report.height, table)
        report.heatmap = str(heatmap_path)
    return report


@dataclass(frozen=True)
class _SegmentTable:
    """Every segment of every line as parallel arrays (millions of segments for a huge raster)."""

    vertical: np.ndarray  # bool
    position: np.ndarray  # the line's x (vertical) or y (horizontal), output px
    start: np.ndarray  # along the line, output px
    stop: np.ndarray
    boundary: np.ndarray  # mean |step| on the boundary (nan: no valid pairs)
    reference: np.ndarray  # mean |step| on the reference line
    line: np.ndarray  # index into the report's lines (for their kinds)

    @property
    def ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.boundary / self.reference
        flat = self.reference == 0
        ratio[flat] = np.where(self.boundary[flat] == 0, 1.0, np.inf)
        return ratio

    @property
    def strength(self) -> np.ndarray:
        """|log(ratio)|, -1 where the ratio is unknown (ranks below every measured segment)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            strength = np.abs(np.log(self.ratio))
        return np.nan_to_num(strength, nan=-1.0, posinf=np.inf)

    def segment(self, i: int, kinds: tuple[str, ...]) -> Segment:
        pos, a, z = int(self.position[i]), int(self.start[i]), int(self.stop[i])
        x0, y0, x1, y1 = (pos, a, pos + 1, z) if self.vertical[i] else (a, pos, z, pos + 1)
        return Segment(
            "vertical" if self.vertical[i] else "horizontal",
            kinds,
            x0,
            y0,
            x1,
            y1,
            float(self.ratio[i]),
            float(self.boundary[i]),
            float(self.reference[i]),
        )


def _report(reader, path: str, geometry: SeamGeometry):
    width, height = reader.width, reader.height
    boundaries = geometry.boundaries(width, height)
    offset = max(1, geometry.stride // 2) * geometry.scale
    lines = []  # (orientation, boundary position, reference position, kinds)
    for orientation, kinds_at in boundaries.items():
        length = width if orientation == "vertical" else height
        for pos, kinds in kinds_at.items():
            reference = _reference(pos, offset, length, kinds_at)
            if reference is not None:
                lines.append((orientation, pos, reference, tuple(sorted(kinds))))
    wanted = {
        o: sorted({p for line in lines if line[0] == o for p in line[1:3]})
        for o in ("vertical", "horizontal")
    }
    edges = {"vertical": _segment_edges(height), "horizontal": _segment_edges(width)}
    sums, counts = _measure(reader, wanted, edges)

    totals = {kind: np.zeros(4) for kind in KINDS}  # boundary sum, count, reference sum, count
    line_counts = {kind: 0 for kind in KINDS}
    columns = {name: [] for name in _SegmentTable.__dataclass_fields__}
    for number, (orientation, pos, ref, kinds) in enumerate(lines):
        b_sum, b_cnt = sums[orientation, pos], counts[orientation, pos]
        r_sum, r_cnt = sums[orientation, ref], counts[orientation, ref]
        for kind in (*kinds, "all"):
            totals[kind] += (b_sum.sum(), b_cnt.sum(), r_sum.sum(), r_cnt.sum())
            line_counts[kind] += 1
        cuts = edges[orientation]
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["boundary"].append(np.where(b_cnt > 0, b_sum / b_cnt, np.nan))
            columns["reference"].append(np.where(r_cnt > 0, r_sum / r_cnt, np.nan))
        columns["start"].append(cuts[:-1])
        columns["stop"].append(cuts[1:])
        n = len(cuts) - 1
        columns["vertical"].append(np.full(n, orientation == "vertical"))
        columns["position"].append(np.full(n, pos, dtype=np.int64))
        columns["line"].append(np.full(n, number, dtype=np.int64))
    empty = {"vertical": bool, "boundary": float, "reference": float}
    table = _SegmentTable(
        **{
            name: np.concatenate(parts) if parts else np.zeros(0, dtype=empty.get(name, np.int64))
            for name, parts in columns.items()
        }
    )

    index, strength, b_grad, r_grad = {}, {}, {}, {}
    for kind in KINDS:
        index[kind], b_grad[kind], r_grad[kind] = _ratio(*totals[kind])
        strength[kind] = _strength(index[kind])
    ranks = table.strength
    worst = [
        table.segment(i, lines[table.line[i]][3])
        for i in np.argsort(-ranks, kind="stable")[:5]
        if ranks[i] >= 0
    ]
    report = SeamReport(
        path=path,
        width=width,
        height=height,
        geometry=geometry,
        index=index,
        strength=strength,
        boundaries=line_counts,
        boundary_gradient=b_grad,
        reference_gradient=r_grad,
        worst_segments=worst,
        segments=len(ranks),
    )
    return report, table
