"""Geometry of tiles and regions, and the partition of unity of the blending weights."""

import numpy as np
import pytest

from tiler.geometry.grid import AxisTiling, Span, TileGrid
from tiler.geometry.weights import edge_ramp, region_profile, tile_weights

SIZES = [
    (1, 8, 8),
    (7, 8, 6),
    (8, 8, 8),
    (9, 8, 6),
    (100, 16, 12),
    (100, 16, 16),
    (257, 32, 20),
    (33, 64, 40),
]


@pytest.mark.parametrize("length,tile,stride", SIZES)
def test_tiles_cover_the_axis_with_constant_shape(length, tile, stride):
    axis = AxisTiling(length, tile, stride, region=24, halo=0)
    spans = [axis.tile_span(k) for k in range(axis.tile_count)]
    assert all(span.size == tile for span in spans)
    assert spans[0].start == 0 and spans[-1].stop >= length
    assert all(b.start - a.start == stride for a, b in zip(spans, spans[1:]))
    assert axis.tile_count == 1 or spans[-2].stop < length  # no tile wholly past the end


@pytest.mark.parametrize("length,tile,stride", SIZES)
@pytest.mark.parametrize("region,halo", [(1, 0), (10, 0), (24, 3), (64, 16), (1000, 0)])
def test_regions_partition_the_axis_and_own_every_tile_they_need(
    length, tile, stride, region, halo
):
    axis = AxisTiling(length, tile, stride, region, halo)
    cores = [axis.region_core(j) for j in range(axis.region_count)]
    assert cores[0].start == 0 and cores[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(cores, cores[1:]))
    for j, core in enumerate(cores):
        extent = axis.region_extent(j)
        assert extent.start == max(0, core.start - halo) and extent.stop == min(
            length, core.stop + halo
        )
        needed = {
            k
            for k in range(axis.tile_count)
            if axis.tile_span(k).start < extent.stop and axis.tile_span(k).stop > extent.start
        }
        assert set(axis.tiles_touching(extent)) == needed
        touching = {
            i
            for i in range(axis.region_count)
            if axis.region_extent(i).start < core.stop and axis.region_extent(i).stop > core.start
        }
        assert set(axis.regions_touching(core)) == touching


def test_region_canvas_is_the_union_of_its_tiles():
    grid = TileGrid(height=50, width=70, tile=16, overlap=4, region=20, halo=5)
    for region in grid.regions():
        ys = [t.y for t in region.tiles]
        xs = [t.x for t in region.tiles]
        assert region.canvas.y == Span(min(s.start for s in ys), max(s.stop for s in ys))
        assert region.canvas.x == Span(min(s.start for s in xs), max(s.stop for s in xs))
        assert region.canvas.intersection(region.extent) == region.extent


def test_overhead_factor_counts_overlap_and_padding():
    assert TileGrid(64, 64, 16, 0, 32, 0).overhead_factor() == 1.0
    assert TileGrid(64, 64, 16, 8, 64, 0).overhead_factor() == pytest.approx((7 * 16 / 64) ** 2)
    assert TileGrid(10, 10, 16, 0, 32, 0).overhead_factor() == pytest.approx(2.56)


@pytest.mark.parametrize("bad", [dict(tile=0), dict(overlap=16), dict(overlap=-1), dict(height=0)])
def test_invalid_grids_are_rejected(bad):
    args = dict(height=10, width=10, tile=16, overlap=0, region=8, halo=0) | bad
    with pytest.raises(ValueError):
        TileGrid(**args)


@pytest.mark.parametrize("tile,overlap", [(16, 4), (16, 8), (32, 5), (8, 1)])
def test_tile_weights_are_a_partition_of_unity_between_neighbours(tile, overlap):
    stride = tile - overlap
    length = stride * 6 + tile
    total = np.zeros(length)
    profile = edge_ramp(tile, overlap)
    for start in range(0, length - tile + 1, stride):
        total[start : start + tile] += profile
    interior = total[tile : length - tile]
    np.testing.assert_allclose(interior, 1.0, atol=1e-12)
    assert (profile > 0).all()
    assert tile_weights(tile, overlap).shape == (tile, tile)


def test_region_profiles_sum_to_one_across_their_overlap():
    length, region, halo = 100, 30, 4
    axis = AxisTiling(length, 8, 8, region, halo)
    total = np.zeros(length)
    for j in range(axis.region_count):
        extent = axis.region_extent(j)
        total[extent.start : extent.stop] += region_profile(extent.start, extent.stop, length, halo)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
