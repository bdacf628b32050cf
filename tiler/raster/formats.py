"""Output formats: the format from a name or extension, GDAL creation options with tiler's defaults,
the output's georeferencing and name, the ``.partial`` name it is written under."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine

from tiler.errors import BadParameter, OutputError, root_cause

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
    else:  # Zarr (tiler/raster/geozarr.py)
        options = dict(ZARR_OPTIONS)
    options.update({key.upper(): value for key, value in overrides.items()})
    return options


# the creation options of a Zarr output, with their default; OVERVIEWS=NO writes none
ZARR_OPTIONS = {"OVERVIEWS": "AUTO"}
ZARR_CHOICES = {"OVERVIEWS": ("AUTO", "YES", "NO")}


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


# codecs GDAL writes only for 8-bit data (it reports the refusal only while closing the file)
EIGHT_BIT_CODECS = ("JPEG", "WEBP")


def check_creation_options(
    fmt: str, dtype: str, count: int, options: dict[str, str], given: dict[str, str]
) -> None:
    """Refuse, before any work, creation options the format's GDAL driver rejects or ignores:
    unknown names, values outside the driver's list, block sizes, a predictor or a compression
    that does not fit ``dtype``. GDAL itself judges them, on a tiny probe file. ``given``: the
    user's ``--co``; a Zarr output takes only ZARR_CHOICES."""
    if fmt == "Zarr":
        for key, value in given.items():
            choices = ZARR_CHOICES.get(key.upper())
            if choices is None or str(value).upper() not in choices:
                accepted = "; ".join(f"{k}={'|'.join(v)}" for k, v in ZARR_CHOICES.items())
                raise BadParameter(
                    "co",
                    f"{key}={value}: a Zarr output takes only {accepted} (GeoTIFF/COG take "
                    "GDAL's creation options)",
                )
        return
    compress = options.get("COMPRESS", "").upper()
    if compress in EIGHT_BIT_CODECS and dtype != "uint8":
        problem = f"COMPRESS={compress} takes 8-bit data (uint8); this output is {dtype}"
    else:
        problem = _probe(fmt, dtype, count, options)
    if problem:
        shown = " ".join(f"{key}={value}" for key, value in given.items())
        raise BadParameter("co", f"{shown or 'the defaults'}: {problem} (GDAL's {fmt} driver)")


def _probe(fmt: str, dtype: str, count: int, options: dict[str, str]) -> str | None:
    """The first complaint of GDAL writing a 32 x 32 px file with ``options``, or None."""
    import logging
    import tempfile
    import warnings

    import rasterio
    from rasterio.shutil import copy

    heard: list[str] = []

    class Listener(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("CPLE_") and " in " in message:  # GDAL's warnings and errors
                heard.append(message.split(" in ", 1)[-1])

    listener, logger = Listener(level=logging.WARNING), logging.getLogger("rasterio")
    logger.addHandler(listener)
    try:
        with tempfile.TemporaryDirectory() as folder, rasterio.Env(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(folder) / "probe.tif"
            profile = dict(driver="GTiff", width=32, height=32, count=count, dtype=dtype)
            first = options if fmt == "GTiff" else {}
            with rasterio.open(path, "w", **profile, **first) as probe:
                probe.write(np.zeros((count, 32, 32), dtype=dtype))
            if fmt == "COG":
                copy(str(path), str(Path(folder) / "probe_cog.tif"), driver="COG", **options)
    except Exception as error:  # GDAL's refusal
        exc = root_cause(error)
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return heard[0] if heard else text.removeprefix(f"{path}: ").removeprefix("probe.tif: ")
    finally:
        logger.removeHandler(listener)
    return heard[0] if heard else None
