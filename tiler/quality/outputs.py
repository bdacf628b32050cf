"""Reading tiler's outputs (GeoTIFF, COG, Zarr): thin strips of their px, and the plan each one
carries in its TILER_PLAN metadata (what ``tiler qa`` and the workflow runner's up-to-date check
read)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from tiler.errors import InputError, NotATilerOutput, first_line
from tiler.execution.export import PLAN_TAG
from tiler.workdir.plan import Plan, plan_from_json


class _TiffLines:
    def __init__(self, path: str):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(path)
        except RasterioIOError as exc:
            raise InputError(f"{path}: not a raster GDAL can read ({first_line(exc)})") from None
        self.width, self.height, self.count = self.ds.width, self.ds.height, self.ds.count
        self.nodata = self.ds.nodata
        self.plan_json = self.ds.tags().get(PLAN_TAG)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        return self.ds.read(window=window)

    def close(self):
        self.ds.close()


class _ZarrLines:
    def __init__(self, path: str):
        import zarr

        try:
            group = zarr.open_group(path, mode="r")
            self.array = group["data"]
        except Exception as exc:  # zarr raises several kinds for "not a group / no such array"
            raise InputError(
                f"{path}: not a Zarr output with a 'data' array ({first_line(exc)})"
            ) from None
        if self.array.ndim != 3:
            raise InputError(
                f"{path}: Zarr array 'data' has shape {self.array.shape}; expected (band, y, x)"
            )
        self.count, self.height, self.width = self.array.shape
        self.nodata = group.attrs.get("nodata")
        self.plan_json = group.attrs.get(PLAN_TAG)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self.array[:, rows, cols]

    def close(self):
        pass


def open_output(path: str):
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        return _ZarrLines(path)
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: file is empty (0 bytes); expected a raster")
    return _TiffLines(path)


def load_plan(output_path) -> Plan:
    """The Plan stored in an output's TILER_PLAN metadata, or NotATilerOutput."""
    reader = open_output(str(output_path))
    try:
        return plan_of(reader, str(output_path))
    finally:
        reader.close()


def plan_of(reader, path: str):
    from pydantic import ValidationError

    if not reader.plan_json:
        raise NotATilerOutput(
            f"{path}: no {PLAN_TAG} metadata, so it was not written by tiler and its tile "
            "geometry is unknown; describe it with --tile, --overlap, --region (latent px) and "
            "--scale"
        )
    try:
        return plan_from_json(reader.plan_json)
    except ValidationError as exc:
        raise InputError(
            f"{path}: its {PLAN_TAG} metadata is not a valid tiler plan "
            f"({exc.error_count()} errors, first: {first_line(exc)})"
        ) from None
