"""Input rasters: describe them, choose bands, read boxes of them (reflected past the edges) through
per-thread GDAL handles, and sample their value range.

An input is any path GDAL opens: a local file, a Zarr store tiler wrote (its ``data`` array), a
GDAL virtual file system path (``/vsicurl/``, ``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ``/vsizip/``,
...) or a URL (``http(s)://``, ``s3://``, ``gs://``, ``az://``), translated to the virtual file
system as rasterio does. Remote files are read window by window (HTTP range requests): a COG is
streamed, never downloaded whole; credentials come from the environment, as GDAL reads them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_S3_ENDPOINT``, ``GS_*``,
``AZURE_STORAGE_*``, ``GDAL_HTTP_*``), and tiler never logs them."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
from affine import Affine
from pydantic import BaseModel, ConfigDict

from tiler.errors import BadParameter, InputError, first_line, root_cause
from tiler.geometry.grid import Box
from tiler.raster.values import valid_mask

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class RasterInfo(BaseModel):
    """What a run needs to know about its input raster (the plan's InputSpec extends it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    path: str
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    georeferenced: bool
    descriptions: tuple[str | None, ...]

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)


# URL schemes -> GDAL's virtual file systems (as rasterio translates them)
URL_SCHEMES = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
    "azure": "/vsiaz/",
}


def _url_parts(text: str) -> tuple[str, str] | None:
    """(GDAL's virtual file system prefix, the rest after ``scheme://``) for a URL tiler reads;
    None for anything else."""
    scheme, separator, rest = text.partition("://")
    prefix = URL_SCHEMES.get(scheme.lower()) if separator else None
    return (prefix, rest) if prefix else None


def is_virtual(path) -> bool:
    """A URL or a GDAL virtual file system path: opened by GDAL, not found on the local disk."""
    text = str(path)
    return text.startswith("/vsi") or _url_parts(text) is not None


def gdal_path(path) -> str:
    """What GDAL opens for the path a user gave: a URL as its virtual file system path, a Zarr
    store tiler wrote as its ``data`` array; any other path as given."""
    text = str(path)
    url = _url_parts(text)
    if url is not None:
        prefix, rest = url
        return prefix + (text if prefix == "/vsicurl/" else rest)
    if os.path.isdir(text) and os.path.isdir(os.path.join(text, "data")):
        return f'ZARR:"{text}":/data'
    return text


def path_identity(path) -> tuple[str, int, int]:
    """(path, size, mtime_ns) that say whether an input changed between a run and its resume:
    a local file's absolute path and stat; a remote one's path as given, size and time unknown
    (-1), as for a local file not made yet (a workflow planning ahead)."""
    if is_virtual(path):
        return str(path), -1, -1
    try:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
    except FileNotFoundError:
        size = mtime = -1
    return os.path.abspath(path), size, mtime


def open_raster(path):
    """rasterio's dataset for the path a user gave (see ``gdal_path``)."""
    import rasterio

    return rasterio.open(gdal_path(path))


def describe(path: str | os.PathLike) -> RasterInfo:
    """Open ``path`` and describe it, or raise InputError naming the file and the problem."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = str(path)
    if not is_virtual(path):
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise InputError(f"{path}: file is empty (0 bytes); expected a raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(path) as ds:
                info = RasterInfo(
                    path=path,
                    width=ds.width,
                    height=ds.height,
                    count=ds.count,
                    dtype=ds.dtypes[0] if ds.count else "",
                    nodata=ds.nodata,
                    crs_wkt=ds.crs.to_wkt() if ds.crs else None,
                    transform=tuple(ds.transform)[:6],
                    georeferenced=ds.crs is not None or ds.transform != Affine.identity(),
                    descriptions=tuple(ds.descriptions),
                )
                dtypes = set(ds.dtypes)
    except RasterioIOError as exc:
        if is_virtual(path):
            raise InputError(
                f"{path}: cannot be opened ({gdal_reason(exc)}); expected a raster GDAL can read "
                "at that address (check the URL, the network and any credentials in the "
                "environment)"
            ) from None
        raise InputError(f"{path}: not a raster GDAL can read ({first_line(exc)})") from None
    if info.width == 0 or info.height == 0 or info.count == 0:
        raise InputError(
            f"{path}: raster has size {info.width} x {info.height} with {info.count} bands; "
            "expected at least 1 x 1 px and 1 band"
        )
    if len(dtypes) > 1:
        raise InputError(f"{path}: bands have mixed dtypes {sorted(dtypes)}; expected one dtype")
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: dtype {info.dtype} is not supported; expected one of "
            f"{', '.join(SUPPORTED_DTYPES)}"
        )
    return info


def parse_bands(text: str | None, info: RasterInfo) -> tuple[int, ...]:
    """Parse ``-b/--bidx`` ('3,2,1', 1-based); default (None): all bands."""
    if text is None:
        return tuple(range(1, info.count + 1))
    if not str(text).strip():
        raise BadParameter("bands", "empty; expected band numbers, e.g. 3,2,1 (omit it for all)")
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadParameter(
            "bands", f"{text!r} is not a comma-separated list of band numbers, e.g. 3,2,1"
        ) from None
    for band in bands:
        if not 1 <= band <= info.count:
            raise BadParameter(
                "bands",
                f"band {band} is out of range; {info.path} has "
                f"{info.count} band(s), numbered 1..{info.count}",
            )
    return bands


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices in [0, length) of positions start..stop-1, reflected at the edges like
    ``numpy.pad(mode="reflect")`` (edge pixel not repeated; periodic for long runs)."""
    positions = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    folded = np.mod(positions, period)
    return np.where(folded >= length, period - folded, folded)


class PerThreadHandles:
    """One GDAL dataset per thread, opened by ``open_dataset`` on the thread's first use (GDAL
    handles are not thread-safe), all closed together."""

    def __init__(self, open_dataset):
        self._open = open_dataset
        self._local = threading.local()
        self._opened = []
        self._lock = threading.Lock()

    def get(self):
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            dataset = self._open()
            self._local.dataset = dataset
            with self._lock:
                self._opened.append(dataset)
        return dataset

    def close(self):
        with self._lock:
            for dataset in self._opened:
                dataset.close()
            self._opened.clear()


class SourceReader:
    """Reads boxes of chosen bands from one raster; one GDAL handle per thread, closed with the
    reader."""

    def __init__(self, info: RasterInfo, bands: tuple[int, ...]):
        self.info = info
        self.bands = list(bands)
        self._handles = PerThreadHandles(lambda: open_raster(self.info.path))

    def read(self, box: Box) -> np.ndarray:
        """Pixels of ``box`` (bands, h, w) in the raster's dtype; outside the raster by
        reflection."""
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        def read_block(rows: slice, cols: slice) -> np.ndarray:
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            try:
                return self._handles.get().read(self.bands, window=window)
            except RasterioIOError as exc:  # "Read failed. See previous exception": find GDAL's
                raise InputError(
                    f"{self.info.path}: reading rows {rows.start}..{rows.stop} failed: "
                    f"{gdal_reason(exc)} (truncated or damaged file?)"
                ) from None

        return read_reflected(read_block, box, self.info.height, self.info.width)

    def close(self):
        self._handles.close()


def read_reflected(read_block, box: Box, height: int, width: int) -> np.ndarray:
    """``box`` of a (bands, height, width) array whose px outside it come by reflection;
    ``read_block(rows, cols)`` reads one in-bounds block (the bounding block of what is needed)."""
    rows = reflect_indices(box.y.start, box.y.stop, height)
    cols = reflect_indices(box.x.start, box.x.stop, width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    block = read_block(slice(r0, r1), slice(c0, c1))
    if _is_contiguous(rows, r0) and _is_contiguous(cols, c0):
        return block
    return block[:, (rows - r0)[:, None], (cols - c0)[None, :]]


def _is_contiguous(indices: np.ndarray, first: int) -> bool:
    return indices[0] == first and bool(np.all(np.diff(indices) == 1))


# The value range is estimated from about SAMPLE_PX px per band; a large raster without overviews is
# sampled as SAMPLE_BLOCKS whole blocks on an even lattice, because a decimated read decompresses
# every block of the file (20000^2 x 3 uint16: 20 s, against 2.4 s for the lattice).
SAMPLE_PX = 2048 * 2048

SAMPLE_BLOCKS = 256


def value_range(
    info: RasterInfo, bands: tuple[int, ...], percentiles=(0.1, 99.9)
) -> tuple[float, float]:
    """The value range that maps to a model's [-1, 1]: the dtype's full range for uint8, else
    percentiles of the valid pixels of ``bands`` over the whole raster, estimated once from a
    sample spread over all of it (bounded memory and time). One range for all bands, so band
    ratios (colour) are kept."""
    if info.dtype == "uint8":
        return (0.0, 255.0)
    with open_raster(info.path) as ds:
        pixels = _sample_pixels(ds, bands)
    values = pixels[valid_mask(pixels, info.nodata)]
    if values.size == 0:
        raise InputError(
            f"{info.path}: bands {','.join(map(str, bands))} hold no valid pixels "
            f"(all nodata {info.nodata})"
        )
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:
        high = low + 1.0
    return (low, high)


def _sample_pixels(ds, bands: tuple[int, ...]) -> np.ndarray:
    """About SAMPLE_PX px of each band, spread over the raster: (bands, n)."""
    import math

    from rasterio.windows import Window

    height, width, count = ds.height, ds.width, len(bands)
    if height * width <= 4 * SAMPLE_PX or ds.overviews(bands[0]):  # GDAL reads the overviews
        factor = max(1, math.ceil(math.sqrt(height * width / SAMPLE_PX)))
        shape = (count, max(1, height // factor), max(1, width // factor))
        return ds.read(list(bands), out_shape=shape).reshape(count, -1)
    block_h, block_w = ds.block_shapes[bands[0] - 1]
    rows, cols = -(-height // block_h), -(-width // block_w)
    picked_rows = min(rows, math.ceil(math.sqrt(SAMPLE_BLOCKS * rows / cols)))
    picked_cols = min(cols, math.ceil(SAMPLE_BLOCKS / picked_rows))
    keep = max(1, block_h * block_w * picked_rows * picked_cols // SAMPLE_PX)  # every keep-th px
    pieces = []
    for row in ((np.arange(picked_rows) + 0.5) * rows / picked_rows).astype(int):
        for col in ((np.arange(picked_cols) + 0.5) * cols / picked_cols).astype(int):
            window = Window(
                col * block_w,
                row * block_h,
                min(block_w, width - col * block_w),
                min(block_h, height - row * block_h),
            )
            pieces.append(ds.read(list(bands), window=window).reshape(count, -1)[:, ::keep])
    return np.concatenate(pieces, axis=1)


def gdal_reason(error: BaseException) -> str:
    """GDAL's own message behind a rasterio error (rasterio chains it as the cause)."""
    return first_line(root_cause(error))
