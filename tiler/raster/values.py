"""Pixel values: which px hold data, blended floats back to the raster's dtype (valid px never
turned into nodata), the fill value, a ``--range`` parsed."""

from __future__ import annotations

import math

import numpy as np

from tiler.errors import BadParameter


def valid_mask(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where a pixel holds data: not equal to nodata, and not NaN for float rasters."""
    valid = np.ones(pixels.shape, dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= pixels != pixels.dtype.type(nodata)
    if np.issubdtype(pixels.dtype, np.floating):
        valid &= ~np.isnan(pixels)
    return valid


def to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Blended float values to ``dtype``: integers rounded to nearest and clipped to the range.
    Overwrites ``values`` (a temporary of the caller's) to save a pass over memory."""
    target = np.dtype(dtype)
    if np.issubdtype(target, np.integer):
        limits = np.iinfo(target)
        np.clip(values, limits.min, limits.max, out=values)
        return np.rint(values, out=values).astype(target)
    if target == np.float32:
        limits = np.finfo(np.float32)
        return np.clip(values, limits.min, limits.max).astype(target)
    return values.astype(target)


def to_pixels(
    values: np.ndarray, valid: np.ndarray, dtype: str, fill: float, nodata: float | None = None
) -> np.ndarray:
    """Blended values to output pixels: valid ones converted to ``dtype``, the others ``fill``.
    A valid px that would round or clip onto ``nodata`` moves to the nearest representable value
    that is not nodata, so it is not read back as missing. Overwrites ``values``."""
    computed = values if nodata is None else values.copy()
    pixels = to_dtype(values if valid.all() else np.where(valid, values, 0), dtype)
    if nodata is not None:
        keep_valid(pixels, valid, computed, nodata)
    if not valid.all():
        pixels[~valid] = fill
    return pixels


def keep_valid(pixels: np.ndarray, valid: np.ndarray, computed: np.ndarray, nodata: float) -> None:
    """Move valid px equal to ``nodata`` one representable step towards their computed value (or
    away from the end of the dtype's range). In place."""
    hit = valid & (pixels == pixels.dtype.type(nodata))
    if not hit.any():
        return
    kind = pixels.dtype
    if np.issubdtype(kind, np.integer):
        limits = np.iinfo(kind)
        below = (computed[hit] < nodata) & (nodata > limits.min) | (nodata == limits.max)
        pixels[hit] = np.where(below, nodata - 1, nodata + 1).astype(kind)
    else:
        target = np.where(computed[hit] < nodata, -np.inf, np.inf).astype(kind)
        pixels[hit] = np.nextafter(pixels[hit], target)


def fill_value(dtype: str, nodata: float | None) -> float:
    """What pixels without data hold in the output: nodata, else NaN for floats, else 0."""
    if nodata is not None:
        return nodata
    return float("nan") if np.issubdtype(np.dtype(dtype), np.floating) else 0


def parse_value_range(text: str) -> tuple[float, float]:
    """``--range MIN,MAX``."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise BadParameter(
            "value_range", f"{text!r} is not MIN,MAX (two numbers, e.g. 0,3000)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadParameter("value_range", f"{text!r}: expected two finite numbers MIN,MAX")
    if not high > low:
        raise BadParameter("value_range", f"{text!r}: MAX must be greater than MIN")
    return (low, high)
