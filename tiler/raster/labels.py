"""Label rasters for semantic synthesis: the class mapping, the plan-time scan, and the model's
conditioning of a box of labels.

A label raster holds integer values (land-cover codes, say); ``--classes FILE`` (YAML or JSON)
maps each to one of the model's class ids, or to ``null`` for "no class" (the output px becomes
nodata, as for the raster's own nodata)::

    11: 177      # open water -> the model's class 177
    21: 123
    0: null      # unclassified: left empty

Without a file the raster values are the model's class ids. The whole raster is scanned once when
planning, so a value without a class is refused before anything runs, with every such value listed.

The conditioning is CompVis' SpatialRescaler (one-hot labels -> ``rescale-stages`` x resize by
``multiplier`` -> learned 1x1 conv). Both resizing and the 1x1 conv are linear, so the conv is
applied first, as a lookup of each class's vector: 3 channels at label resolution instead of 182
one-hot channels, the same result to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiler.errors import InputError, first_line
from tiler.raster.sources import RasterInfo, open_raster
from tiler.raster.values import valid_mask

SCAN_ROWS = 1024  # label rows read at a time when scanning the whole raster

LISTED = 20  # unmapped values named in an error


def check_label_raster(info: RasterInfo, bands: tuple[int, ...]) -> None:
    if len(bands) != 1:
        raise InputError(
            f"{info.path}: {len(bands)} bands selected ({','.join(map(str, bands))}); "
            "expected one band of class ids (choose it with -b N)"
        )
    if not np.issubdtype(np.dtype(info.dtype), np.integer):
        raise InputError(
            f"{info.path}: band {bands[0]} is {info.dtype}; expected an integer raster of class ids"
        )


def read_classes(path) -> dict[int, int | None]:
    """The mapping in ``path``: integer raster values to integer class ids or null."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable YAML or JSON file ({first_line(exc)})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(
            f"{path}: {type(data).__name__}; expected a mapping of raster values to "
            "class ids, e.g. {11: 177, 0: null}"
        )
    mapping = {}
    for key, value in data.items():
        raster_value = _as_int(key)
        if raster_value is None:
            raise InputError(f"{path}: key {key!r}: expected an integer raster value")
        if value is not None and _as_int(value) is None:
            raise InputError(f"{path}: {key}: {value!r}: expected an integer class id or null")
        mapping[raster_value] = None if value is None else _as_int(value)
    return mapping


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def scan_values(info: RasterInfo, band: int) -> dict[int, int]:
    """How many px hold each value of ``band`` (nodata excluded), reading SCAN_ROWS rows at a
    time."""
    from rasterio.windows import Window

    counts: dict[int, int] = {}
    with open_raster(info.path) as ds:
        for top in range(0, info.height, SCAN_ROWS):
            rows = min(SCAN_ROWS, info.height - top)
            values = ds.read(band, window=Window(0, top, info.width, rows))
            values = values[valid_mask(values[None], info.nodata)[0]]
            for value, count in zip(*_value_counts(values)):
                counts[int(value)] = counts.get(int(value), 0) + int(count)
    return counts


def _value_counts(values: np.ndarray):
    if values.dtype.itemsize <= 2:  # a histogram is much faster than sorting
        low = int(np.iinfo(values.dtype).min)
        shifted = values if low == 0 else values.astype(np.int32) - low  # no copy for uint8/16
        counts = np.bincount(shifted.ravel())
        present = np.flatnonzero(counts)
        return present + low, counts[present]
    return np.unique(values, return_counts=True)
