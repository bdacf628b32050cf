"""The inpainting mask: sources (aligned file, resampled file, input nodata/alpha, a band),
alignment errors, dilation with context across boxes, and the latent tiles touching the mask."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import NORTH_UP, make_raster

from tiler.errors import BadParameter, InputError
from tiler.geometry.grid import Box, Span, TileGrid
from tiler.raster.mask import MaskReader, MaskSpec, check_mask, touched_tiles
from tiler.raster.sources import describe

WIDTH, HEIGHT = 50, 36


def whole(height=HEIGHT, width=WIDTH) -> Box:
    return Box(Span(0, height), Span(0, width))


def read_all(spec, src, bands=(1, 2, 3)):
    info = describe(src)
    check_mask(spec, info, bands)
    reader = MaskReader(spec, info, bands)
    try:
        return reader.read(whole(info.height, info.width))
    finally:
        reader.close()


def blobs(seed=0, height=HEIGHT, width=WIDTH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    area = np.zeros((height, width), dtype=bool)
    for _ in range(4):
        y, x = rng.integers(0, height), rng.integers(0, width)
        area[max(0, y - 2) : y + 3, max(0, x - 3) : x + 2] = True
    return area


@pytest.fixture
def src(tmp_path):
    return make_raster(tmp_path / "in.tif", width=WIDTH, height=HEIGHT)


def test_aligned_mask_file(tmp_path, src):
    area = blobs()
    mask = make_raster(tmp_path / "mask.tif", data=(area * 255).astype("uint8")[None])
    np.testing.assert_array_equal(read_all(MaskSpec("file", str(mask)), src), area)


def test_mask_file_on_another_grid_in_the_same_crs_is_resampled(tmp_path, src):
    """A mask at twice the resolution, with a margin of 4 of its px around the input."""
    area = blobs(1)
    fine = np.repeat(np.repeat(area, 2, axis=0), 2, axis=1)
    padded = np.zeros((fine.shape[0] + 8, fine.shape[1] + 8), dtype="uint8")
    padded[4:-4, 4:-4] = fine
    transform = NORTH_UP @ Affine.translation(-2, -2) @ Affine.scale(0.5)
    mask = make_raster(tmp_path / "mask.tif", data=padded[None], transform=transform)
    np.testing.assert_array_equal(read_all(MaskSpec("file", str(mask)), src), area)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("size", ["mask is 20 x 10 px", f"expected the input's {WIDTH} x {HEIGHT} px"]),
        ("crs", ["mask CRS EPSG:32634 differs", "EPSG:32633"]),
        ("cover", ["does not cover the input's footprint"]),
    ],
)
def test_misaligned_masks_are_refused(tmp_path, src, case, fragments):
    options = {
        "size": dict(width=20, height=10, crs=None, transform=None),
        "crs": dict(crs="EPSG:32634"),
        "cover": dict(width=WIDTH - 5),
    }[case]
    mask = make_raster(tmp_path / "mask.tif", count=1, **options)
    with pytest.raises(InputError) as raised:
        check_mask(MaskSpec("file", str(mask)), describe(src), (1, 2, 3))
    assert str(raised.value).startswith(f"{mask}: ")
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_mask_from_the_inputs_nodata_nan_and_alpha(tmp_path):
    area = blobs(2)
    pixels = np.full((3, HEIGHT, WIDTH), 7, dtype="uint16")
    pixels[1][area] = 0
    nodata = make_raster(tmp_path / "nodata.tif", data=pixels, nodata=0)
    np.testing.assert_array_equal(read_all(MaskSpec("nodata"), nodata), area)

    floats = np.ones((3, HEIGHT, WIDTH), dtype="float32")
    floats[2][area] = np.nan
    nan = make_raster(tmp_path / "nan.tif", data=floats)
    np.testing.assert_array_equal(read_all(MaskSpec("nodata"), nan), area)

    alpha = make_raster(tmp_path / "alpha.tif", data=np.full((3, HEIGHT, WIDTH), 9, dtype="uint8"))
    with rasterio.open(alpha, "r+") as dst:
        dst.write_mask(np.where(area, 0, 255).astype("uint8"))
    np.testing.assert_array_equal(read_all(MaskSpec("nodata"), alpha), area)


def test_mask_band_of_the_input(tmp_path):
    area = blobs(3)
    pixels = np.full((4, HEIGHT, WIDTH), 100, dtype="uint8")
    pixels[3] = area
    src = make_raster(tmp_path / "in.tif", data=pixels)
    np.testing.assert_array_equal(read_all(MaskSpec("band", band=4), src), area)
    with pytest.raises(BadParameter, match="band 4 is also an image band"):
        check_mask(MaskSpec("band", band=4), describe(src), (1, 2, 3, 4))
    with pytest.raises(BadParameter, match="band 5 is out of range"):
        check_mask(MaskSpec("band", band=5), describe(src), (1, 2, 3))


def test_dilation_is_a_disk_and_reads_context_across_boxes(tmp_path, src):
    area = np.zeros((HEIGHT, WIDTH), dtype=bool)
    area[10, 24] = True
    area[20, 30] = True
    mask = make_raster(tmp_path / "mask.tif", data=area.astype("uint8")[None])
    spec = MaskSpec("file", str(mask), dilate=2)
    grown = read_all(spec, src)
    assert grown.sum() == 2 * 13  # a disk of radius 2 holds 13 px
    reader = MaskReader(spec, describe(src), (1, 2, 3))
    left = reader.read(Box(Span(0, HEIGHT), Span(0, 25)))  # the split runs through a disk
    right = reader.read(Box(Span(0, HEIGHT), Span(25, WIDTH)))
    reader.close()
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), grown)


@pytest.mark.parametrize(
    "factor, tile, overlap, margin", [(1, 8, 2, 0), (4, 4, 1, 0), (4, 4, 1, 2), (2, 6, 0, 1)]
)
def test_touched_tiles_match_a_brute_force_count(
    tmp_path, src, factor, tile, overlap, margin, monkeypatch
):
    import tiler.raster.mask

    monkeypatch.setattr(tiler.raster.mask, "SCAN_BLOCK", 16)  # several blocks on a small raster
    area = blobs(4)
    mask = make_raster(tmp_path / "mask.tif", data=area.astype("uint8")[None])
    reader = MaskReader(MaskSpec("file", str(mask)), describe(src), (1, 2, 3))
    grid = TileGrid(-(-HEIGHT // factor), -(-WIDTH // factor), tile, overlap, 16, 0)
    coverage = touched_tiles(reader, grid, factor, margin)
    reader.close()

    latent = np.zeros((grid.height, grid.width), dtype=bool)
    for y, x in zip(*np.nonzero(area)):
        latent[y // factor, x // factor] = True
    expected = set()
    for ty in range(grid.rows.tile_count):
        for tx in range(grid.cols.tile_count):
            rows, cols = grid.rows.tile_span(ty), grid.cols.tile_span(tx)
            near = latent[
                max(0, rows.start - margin) : rows.stop + margin,
                max(0, cols.start - margin) : cols.stop + margin,
            ]
            if near.any():
                expected.add((ty, tx))
    assert coverage.tiles == expected
    assert coverage.masked_px == area.sum() and coverage.total_px == WIDTH * HEIGHT
    assert 0 < len(expected) < coverage.tile_count


def test_empty_mask_touches_no_tile(tmp_path, src):
    mask = make_raster(tmp_path / "mask.tif", data=np.zeros((1, HEIGHT, WIDTH), dtype="uint8"))
    reader = MaskReader(MaskSpec("file", str(mask)), describe(src), (1, 2, 3))
    coverage = touched_tiles(reader, TileGrid(HEIGHT, WIDTH, 8, 2, 16, 0), 1)
    reader.close()
    assert coverage.tiles == frozenset() and coverage.masked_px == 0 and coverage.fraction == 0
