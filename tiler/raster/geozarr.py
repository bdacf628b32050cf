"""Georeferenced Zarr outputs that xarray (with rioxarray or odc-geo), GDAL and QGIS read.

Layout of ``OUTPUT.zarr`` (Zarr format 2: GDAL 3.10's Zarr driver, the one in rasterio's wheels,
reads no Zarr 3 store written by zarr-python 3, "Unsupported codec: bytes"):

- ``data`` (band, y, x): the px, Zstandard-compressed, nodata as the fill value, with the CF
  attributes ``grid_mapping`` and ``coordinates`` naming ``spatial_ref`` (as rioxarray writes them)
  and GDAL's ``_CRS``;
- ``x``, ``y``: pixel-centre coordinates (1-D), ``band``: 1..n, with the band descriptions;
- ``spatial_ref``: the CF grid-mapping variable: the CRS as WKT (``crs_wkt``, ``spatial_ref``) and
  the GDAL GeoTransform;
- ``overview_2``, ``overview_4``, ...: the same variables at 1/2, 1/4, ... resolution (block means
  of valid px), listed in the group's ``multiscales`` attribute (the zarr-conventions multiscales
  convention, which GeoZarr adopts), like a COG's overviews; none with ``--co OVERVIEWS=NO``.

Metadata is consolidated (``.zmetadata``) so that xarray opens the store with one read.
"""

from __future__ import annotations

import numpy as np

from tiler.raster.values import valid_mask

DATA = "data"
GRID_MAPPING = "spatial_ref"
# overviews stop once the smaller side fits in this many px (a COG's rule of thumb)
OVERVIEW_MIN_SIDE = 256
MULTISCALES = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "description": "Multiscale layout of zarr datasets",
}


def overview_factors(width: int, height: int) -> list[int]:
    """2, 4, 8, ... while the overview's smaller side stays at least OVERVIEW_MIN_SIDE px."""
    factors, factor = [], 2
    while min(width, height) // factor >= OVERVIEW_MIN_SIDE:
        factors.append(factor)
        factor *= 2
    return factors


def create_level(
    group,
    *,
    count: int,
    width: int,
    height: int,
    chunks: tuple[int, int, int],
    dtype: str,
    nodata: float | None,
    crs_wkt: str | None,
    transform: tuple[float, ...] | None,
    descriptions: tuple[str | None, ...],
):
    """The georeferenced variables of one resolution level in ``group``; returns the empty
    ``data`` array to fill. ``transform``: the affine (a, b, c, d, e, f) of the level, or None for
    an output without georeferencing (coordinates are then px centres)."""
    import numcodecs

    data = group.create_array(
        DATA,
        shape=(count, height, width),
        chunks=chunks,
        dtype=dtype,
        fill_value=nodata,
        compressors=[numcodecs.Zstd(level=3)],
    )
    data.attrs.update(
        {
            "_ARRAY_DIMENSIONS": ["band", "y", "x"],
            "long_name": [text or "" for text in descriptions],
        }
    )
    a, b, c, d, e, f = transform or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    _coordinate(group, "x", c + a * (np.arange(width) + 0.5), "projection_x_coordinate", "X")
    _coordinate(group, "y", f + e * (np.arange(height) + 0.5), "projection_y_coordinate", "Y")
    band = group.create_array("band", shape=(count,), dtype="int64", fill_value=None)
    band[:] = np.arange(1, count + 1)
    band.attrs.update({"_ARRAY_DIMENSIONS": ["band"], "long_name": "band number"})
    if crs_wkt:
        data.attrs.update(
            {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING, "_CRS": {"wkt": crs_wkt}}
        )
        mapping = group.create_array(GRID_MAPPING, shape=(), dtype="int64", fill_value=None)
        mapping[...] = 0
        mapping.attrs.update(
            {"_ARRAY_DIMENSIONS": [], "GeoTransform": " ".join(map(repr, (c, a, b, f, d, e)))}
            | grid_mapping_attributes(crs_wkt)
        )
    return data


def _coordinate(group, name: str, values: np.ndarray, standard_name: str, axis: str):
    array = group.create_array(name, shape=values.shape, dtype="float64", fill_value=None)
    array[:] = values
    array.attrs.update({"_ARRAY_DIMENSIONS": [name], "standard_name": standard_name, "axis": axis})


def grid_mapping_attributes(crs_wkt: str) -> dict:
    """The CF grid-mapping attributes of a CRS (pyproj's ``to_cf``), with the WKT under both
    names readers look for (``crs_wkt``: CF; ``spatial_ref``: GDAL's netCDF driver, rioxarray)."""
    from pyproj import CRS

    crs = CRS.from_wkt(crs_wkt)
    attributes = {key: _plain(value) for key, value in crs.to_cf().items()}
    return attributes | {"crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt()}


def _plain(value):
    """JSON-serialisable attribute values (numpy scalars and tuples from pyproj)."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def multiscales_attributes(factors: list[int]) -> dict:
    """The group attributes listing the full-resolution ``data`` and its overviews."""
    layout = [{"asset": DATA}] + [
        {
            "asset": f"{overview_name(factor)}/{DATA}",
            "derived_from": DATA if factor == 2 else f"{overview_name(factor // 2)}/{DATA}",
            "transform": {"scale": [2.0, 2.0]},
            "resampling_method": "average",
        }
        for factor in factors
    ]
    return {"zarr_conventions": [MULTISCALES], "multiscales": {"layout": layout}}


def overview_name(factor: int) -> str:
    return f"overview_{factor}"


def scaled_transform(transform, factor: int):
    if transform is None:
        return None
    a, b, c, d, e, f = transform
    return (a * factor, b * factor, c, d * factor, e * factor, f)


def block_average(block: np.ndarray, nodata: float | None, dtype: str) -> np.ndarray:
    """2 x 2 means of the valid px of ``block`` (bands, 2h, 2w; odd edges padded by repetition),
    nodata where none is valid, rounded to an integer ``dtype``."""
    bands, height, width = block.shape
    block = np.pad(block, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
    valid = valid_mask(block, nodata)
    values = np.where(valid, block, 0).astype(np.float64)
    shape = (bands, block.shape[1] // 2, 2, block.shape[2] // 2, 2)
    sums = values.reshape(shape).sum(axis=(2, 4))
    counts = valid.reshape(shape).sum(axis=(2, 4))
    means = sums / np.maximum(counts, 1)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        means = np.clip(np.rint(means), info.min, info.max)
    fill = nodata if nodata is not None else 0
    return np.where(counts > 0, means, fill).astype(dtype)
