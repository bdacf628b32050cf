"""Export: the workdir's ``output`` array -> the final GeoTIFF, COG or Zarr, by one writer.

The file is written as ``OUTPUT.partial`` beside OUTPUT and renamed when complete, so a file under
the final name is always whole. GeoTIFFs are written block by block (bounded memory); a COG is made
by copying that tiled GeoTIFF with GDAL's COG driver, which streams, rather than by writing through
the COG driver, which would buffer the whole raster.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
from pathlib import Path

from tiler.errors import OutputError, root_cause
from tiler.execution.threads import GateClosed
from tiler.raster import geozarr
from tiler.raster.formats import creation_options, partial_path
from tiler.workdir.store import Workdir

PLAN_TAG = "TILER_PLAN"  # metadata item holding the run's plan (JSON): what `tiler qa` reads


def export(workdir: Workdir, progress: bool, overwrite: bool, wait_for=None) -> None:
    """Write the final file; ``wait_for(chunk_index)``, if given, blocks until that chunk of
    ``output`` is computed, so export can run while the compute stages still work."""
    plan = workdir.plan
    wait_for = wait_for or (lambda index: None)
    final = Path(plan.output.path)
    partial = partial_path(final)
    _remove(partial)
    try:
        with _gdal_messages_logged():
            _write(workdir, plan, partial, progress, wait_for)
    except BaseException as exc:
        reason = _reason(exc, partial, workdir.path / "export.tif")  # before removing the file
        _remove(partial)
        if isinstance(exc, (KeyboardInterrupt, SystemExit, OutputError, GateClosed)):
            raise
        raise OutputError(f"{final}: writing the output failed: {reason}") from exc
    _replace(partial, final, overwrite)


def _write(workdir: Workdir, plan, partial: Path, progress: bool, wait_for) -> None:
    """The output's bytes at ``partial``: Zarr, or a GeoTIFF written block by block (a COG is
    that GeoTIFF copied by GDAL's COG driver, which streams); GeoTIFF blocks checked after."""
    if plan.output.format == "Zarr":
        _write_zarr(workdir, partial, progress, wait_for)
        return
    if plan.output.format == "GTiff":
        _write_gtiff(workdir, partial, plan.output.creation_options, progress, wait_for)
    else:
        staging = workdir.path / "export.tif"
        _remove(staging)
        options = creation_options(plan.output.dtype, "GTiff", {})
        _write_gtiff(workdir, staging, options, progress, wait_for)
        _copy_to_cog(staging, partial, plan.output.creation_options)
        staging.unlink()
    _check_written(partial, plan.output.creation_options)


def _gdal_messages_logged():
    """GDAL's messages to logging, not stderr, while writing: the one error line tiler prints
    says what happened. (libtiff's I/O errors, "_tiffWriteProc: No space left on device", are
    printed by libtiff itself and still reach stderr.)"""
    import rasterio

    return rasterio.Env()


def _reason(error: BaseException, partial: Path, staging: Path) -> str:
    """The failure's reason; a full disk always says so, with the folder: an ENOSPC anywhere in
    the chain, less than 1 MiB free, or less free than the staged GeoTIFF a COG is copied from
    (GDAL removes a COG it failed to write, so the space is free again by now)."""
    text = _one_line(error)
    chain, cause = [error], error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
        chain.append(cause)
    full = any(getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
               for e in chain)  # fmt: skip
    try:
        free = shutil.disk_usage(partial.parent).free
        needed = staging.stat().st_size if staging.is_file() else 0
        full = full or free < max(1 << 20, needed)
    except OSError:
        pass
    if full and "no space left on device" not in text.lower():
        return f"no space left on device ({partial.parent}): {text}"
    return text


def _replace(partial: Path, final: Path, overwrite: bool) -> None:
    """Move the whole ``partial`` file under the final name (never over a foreign folder)."""
    if final.exists():
        if final.is_dir() and not written_by_tiler(final):
            _remove(partial)
            raise OutputError(
                f"{final}: a folder tiler did not write appeared during the run; not replaced"
            )
        if not overwrite:
            _remove(partial)
            raise OutputError(f"{final}: appeared during the run; not replaced without --overwrite")
        _remove(final)
    os.replace(partial, final)


def _chunk_boxes(array):
    """Row-major ((iy, ix), rows, cols) of ``array``'s chunks (last two axes)."""
    height, width = array.shape[-2:]
    ch, cw = array.chunks[-2:]
    for iy, y in enumerate(range(0, height, ch)):
        for ix, x in enumerate(range(0, width, cw)):
            yield (iy, ix), slice(y, min(y + ch, height)), slice(x, min(x + cw, width))


def _progress(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="chunk",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
        position=1,
    )


def _write_gtiff(workdir: Workdir, path: Path, options: dict[str, str], progress: bool, wait_for):
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    plan = workdir.plan
    out = plan.output
    source = workdir.array("output")
    profile = dict(
        driver="GTiff",
        width=out.width,
        height=out.height,
        count=out.count,
        dtype=out.dtype,
        nodata=out.nodata,
        **options,
    )
    if out.transform is not None:
        profile["transform"] = Affine(*out.transform)
        if plan.input.crs_wkt:
            profile["crs"] = CRS.from_wkt(plan.input.crs_wkt)
    boxes = list(_chunk_boxes(source))
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**{PLAN_TAG: plan.model_dump_json()})
        for index, description in enumerate(plan.output_descriptions(), start=1):
            if description:
                dst.set_band_description(index, description)
        with _progress(len(boxes), "export", progress) as bar:
            for index, rows, cols in boxes:
                wait_for(index)
                window = Window(
                    cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
                )
                dst.write(source[:, rows, cols], window=window)
                bar.update(1)


def _copy_to_cog(staging: Path, path: Path, options: dict[str, str]):
    from rasterio.shutil import copy

    copy(str(staging), str(path), driver="COG", **options)


def _check_written(path: Path, options: dict[str, str]):
    """Check that every block of the TIFF at ``path`` lies wholly inside the file.

    GDAL reports some write failures only while closing the file (a full disk when its compression
    threads flush their blocks) and rasterio does not raise them: the file then lists blocks whose
    bytes were never written. Without this check a truncated file would be renamed into place and
    the run would succeed. Reading the block table costs about a second for 100,000 blocks, where
    reading the pixels back would cost as much as writing them."""
    import rasterio
    from rasterio.errors import RasterioIOError

    size = path.stat().st_size
    sparse_ok = options.get("SPARSE_OK", "FALSE").upper() in ("TRUE", "YES", "ON", "1")
    try:
        with rasterio.open(path) as ds:
            block_height, block_width = ds.block_shapes[0]
            rows, cols = -(-ds.height // block_height), -(-ds.width // block_width)
            for band in ds.indexes:
                for row in range(rows):
                    for col in range(cols):
                        offset = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                        length = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                        if not offset or not length:
                            if sparse_ok:
                                continue
                            raise OSError(
                                f"{path}: block {col},{row} of band {band} was never written "
                                "(disk full?)"
                            )
                        if int(offset) + int(length) > size:
                            raise OSError(
                                f"{path}: block {col},{row} of band {band} ends past the end "
                                f"of the file ({size} bytes): the write was cut short "
                                "(disk full?)"
                            )
    except RasterioIOError as exc:
        raise OSError(
            f"{path} does not read back after writing (disk full?): {_one_line(root_cause(exc))}"
        ) from None


def _write_zarr(workdir: Workdir, path: Path, progress: bool, wait_for):
    """A georeferenced Zarr (tiler/raster/geozarr.py): the px, then the overviews, each level made
    from the one before chunk by chunk, then the consolidated metadata."""
    import zarr

    plan = workdir.plan
    out = plan.output
    source = workdir.array("output")
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    factors = (
        geozarr.overview_factors(out.width, out.height)
        if out.creation_options.get("OVERVIEWS", "AUTO").upper() != "NO"
        else []
    )
    group.attrs.update(
        {
            "crs_wkt": plan.input.crs_wkt,  # as earlier versions wrote them
            "transform": list(out.transform) if out.transform else None,
            "nodata": out.nodata,
            "bands": list(plan.bands),
            "source": plan.input.path,
            PLAN_TAG: plan.model_dump_json(),
        }
        | (geozarr.multiscales_attributes(factors) if factors else {})
    )
    level = functools.partial(
        geozarr.create_level,
        count=out.count,
        chunks=source.chunks,
        dtype=out.dtype,
        nodata=out.nodata,
        crs_wkt=plan.input.crs_wkt,
        descriptions=plan.output_descriptions(),
    )
    target = level(group, width=out.width, height=out.height, transform=out.transform)
    boxes = list(_chunk_boxes(source))
    with _progress(len(boxes), "export", progress) as bar:
        for index, rows, cols in boxes:
            wait_for(index)
            target[:, rows, cols] = source[:, rows, cols]
            bar.update(1)
    for factor in factors:
        finer, target = (
            target,
            level(
                group.create_group(geozarr.overview_name(factor)),
                width=-(-out.width // factor),
                height=-(-out.height // factor),
                transform=geozarr.scaled_transform(out.transform, factor),
            ),
        )
        for _, rows, cols in _chunk_boxes(target):
            block = finer[:, 2 * rows.start : 2 * rows.stop, 2 * cols.start : 2 * cols.stop]
            target[:, rows, cols] = geozarr.block_average(block, out.nodata, out.dtype)
    zarr.consolidate_metadata(str(path))


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def written_by_tiler(path: Path) -> bool:
    """Whether ``path`` carries tiler's plan in its metadata (GeoTIFF tags, Zarr attributes)."""
    path = Path(path)
    if path.is_dir():  # Zarr format 2 (.zattrs) or, from earlier versions, 3 (zarr.json)
        for name, read in ((".zattrs", dict), ("zarr.json", lambda doc: doc.get("attributes"))):
            try:
                attributes = read(json.loads((path / name).read_text()))
            except (OSError, ValueError, AttributeError, TypeError):
                continue
            return PLAN_TAG in (attributes or {})
        return False
    try:
        import rasterio

        with rasterio.open(path) as dataset:
            return PLAN_TAG in dataset.tags()
    except Exception:  # not a raster GDAL reads
        return False
