"""Output formats: the format from a name or extension, GDAL creation options with tiler's defaults,
the output's georeferencing and name, the ``.partial`` name it is written under."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine

from tiler.errors import BadParameter, OutputError

OutputFormat = Literal["GTiff", "COG", "Zarr"]


def output_transform(transform: Affine, scale: int) -> Affine:
    """Output pixel grid of a ``scale``-times upscale: exact for rotated grids too."""
    return transform @ Affine.scale(1 / scale)


def check_output_folder(path: Path) -> None:
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{path}: {folder} is a file; expected an output folder")
    if not folder.is_dir():
        raise OutputError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: output folder {folder} is not writable")


EXTENSIONS = {".tif": "GTiff", ".tiff": "GTiff", ".zarr": "Zarr"}


def format_for(path: Path, requested: str | None) -> OutputFormat:
    """The output format: ``--format`` if given, else from the extension."""
    if requested:
        return requested
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise BadParameter(
            "output",
            f"{path}: cannot tell the format from extension "
            f"{path.suffix or '(none)'!r}; use .tif, .tiff or .zarr, or pass "
            "--format GTiff|COG|Zarr",
        )
    return fmt


def creation_options(plan_dtype: str, fmt: str, overrides: dict[str, str]) -> dict[str, str]:
    """Tiled, compressed, BigTIFF when needed; ``--co`` overrides win."""
    floating = np.issubdtype(np.dtype(plan_dtype), np.floating)
    if fmt == "GTiff":
        options = {
            "TILED": "YES",
            "BLOCKXSIZE": "512",
            "BLOCKYSIZE": "512",
            "COMPRESS": "DEFLATE",
            "PREDICTOR": "3" if floating else "2",
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": "ALL_CPUS",
        }
    elif fmt == "COG":
        options = {
            "BLOCKSIZE": "512",
            "COMPRESS": "DEFLATE",
            "PREDICTOR": "YES",
            "BIGTIFF": "IF_SAFER",
            "NUM_THREADS": "ALL_CPUS",
            "OVERVIEWS": "AUTO",
            "OVERVIEW_RESAMPLING": "AVERAGE",
        }
    else:
        options = {}
    options.update({key.upper(): value for key, value in overrides.items()})
    return options


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
