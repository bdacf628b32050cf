"""Zarr outputs in the conventions of the geospatial tools (tiler/raster/geozarr.py): GDAL (through
rasterio) and xarray with rioxarray read the CRS, the transform, nodata and the px of a Zarr output
as they read the GeoTIFF output of the same run; overviews sit beside the data, listed in the
multiscales attribute; ``tiler qa`` reads the output as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import make_raster, read_raster, run_tiler

from tiler.quality.outputs import load_plan


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One 4x bicubic run written as GeoTIFF and as Zarr (1072 x 1040 px: two overview levels)."""
    folder = tmp_path_factory.mktemp("geozarr")
    src = make_raster(folder / "in.tif", width=268, height=260, count=2, dtype="uint16", nodata=0)
    for name in ("out.tif", "out.zarr"):
        result = run_tiler("upscale", src, folder / name, "--model", "bicubic", "-q")
        assert result.returncode == 0, result.stderr
    return folder


def test_gdal_reads_the_zarr_like_the_geotiff(outputs):
    with rasterio.open(outputs / "out.tif") as tiff:
        expected = tiff.read()
        profile = (tiff.crs, tiff.transform, tiff.nodata, tiff.count, tiff.dtypes[0])
    with rasterio.open(f'ZARR:"{outputs / "out.zarr"}":/data') as zarr_data:
        assert zarr_data.driver == "Zarr"
        got = (zarr_data.crs, zarr_data.transform, zarr_data.nodata, zarr_data.count)
        assert got + (zarr_data.dtypes[0],) == profile
        np.testing.assert_array_equal(zarr_data.read(), expected)


def test_xarray_and_rioxarray_read_coordinates_crs_and_nodata(outputs):
    import rioxarray  # noqa: F401 (registers .rio)
    import xarray as xr

    dataset = xr.open_zarr(outputs / "out.zarr", mask_and_scale=False)
    data = dataset["data"]
    tiff = rioxarray.open_rasterio(outputs / "out.tif")
    assert data.dims == ("band", "y", "x") and "spatial_ref" in data.coords
    assert data.rio.crs == tiff.rio.crs and data.rio.crs.to_epsg() == 32633
    assert data.rio.transform() == tiff.rio.transform()
    assert data.rio.nodata == 0
    np.testing.assert_allclose(data.x.values, tiff.x.values)
    np.testing.assert_allclose(data.y.values, tiff.y.values)
    np.testing.assert_array_equal(data.values, tiff.values)
    assert "TILER_PLAN" in dataset.attrs


def test_overviews_are_block_means_listed_as_multiscales(outputs):
    import rioxarray  # noqa: F401
    import xarray as xr

    attributes = json.loads((outputs / "out.zarr" / ".zattrs").read_text())
    layout = attributes["multiscales"]["layout"]
    assert [level["asset"] for level in layout] == ["data", "overview_2/data", "overview_4/data"]
    assert attributes["zarr_conventions"][0]["name"] == "multiscales"
    full = read_raster(outputs / "out.tif")[0].astype(np.float64)
    half = xr.open_zarr(outputs / "out.zarr", group="overview_2", mask_and_scale=False)["data"]
    assert half.shape == (2, 520, 536)
    valid = full != 0
    sums = np.where(valid, full, 0).reshape(2, 520, 2, 536, 2).sum(axis=(2, 4))
    counts = valid.reshape(2, 520, 2, 536, 2).sum(axis=(2, 4))
    expected = np.where(counts > 0, np.rint(sums / np.maximum(counts, 1)), 0)
    np.testing.assert_array_equal(half.values, expected)
    with rasterio.open(outputs / "out.tif") as tiff:
        assert half.rio.transform() == tiff.transform * tiff.transform.scale(2)
        assert half.rio.crs == tiff.crs


def test_qa_reads_it_and_overviews_can_be_left_out(outputs, tmp_path):
    assert load_plan(outputs / "out.zarr").fingerprint == load_plan(outputs / "out.tif").fingerprint
    report = run_tiler("qa", outputs / "out.zarr", "--json")
    assert report.returncode == 0, report.stderr
    src = outputs / "in.tif"
    result = run_tiler(
        "upscale", src, tmp_path / "flat.zarr", "--model", "bicubic", "--co", "OVERVIEWS=NO", "-q"
    )
    assert result.returncode == 0, result.stderr
    assert "multiscales" not in json.loads((tmp_path / "flat.zarr" / ".zattrs").read_text())
    with rasterio.open(tmp_path / "flat.zarr") as whole:  # one data array: GDAL opens the root
        assert (whole.count, whole.width, whole.crs.to_epsg()) == (2, 1072, 32633)
