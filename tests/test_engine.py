"""The engine is exact: classical models through tiles, regions, halos and blending equal the same
model applied to the whole raster at once."""

import numpy as np
import pytest
import rasterio
from conftest import NORTH_UP, ROTATED, make_raster, raster_content, read_raster

from tiler.execution.run import run_plan
from tiler.tasks import plan_upscale


def upscale(src, dst, **options):
    run_options = {
        k: options.pop(k) for k in ("workers", "keep_workdir", "overwrite") if k in options
    }
    plan = plan_upscale(src, dst, **options)
    run_plan(plan, **run_options)
    return read_raster(dst)


# --- whole-raster references, written independently of tiler's resampler -----------------------
def keys_cubic(x, a=-0.5):
    x = np.abs(x)
    return np.where(
        x <= 1,
        (a + 2) * x**3 - (a + 3) * x**2 + 1,
        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0),
    )


def lanczos3(x):
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


def resample_axis(image, axis, scale, kernel, support):
    """1-D resampling of a reflect-padded axis by direct convolution (taps gathered per output
    px)."""
    n = image.shape[axis]
    padded = np.pad(
        image,
        [(support, support) if a == axis else (0, 0) for a in range(image.ndim)],
        mode="reflect",
    )
    centres = (np.arange(n * scale) + 0.5) / scale - 0.5
    first = np.floor(centres).astype(int) - support + 1
    taps = first[:, None] + np.arange(2 * support)[None, :]
    weights = kernel(centres[:, None] - taps)
    weights /= weights.sum(axis=1, keepdims=True)
    gathered = np.take(padded, taps + support, axis=axis)  # (..., n*scale, 2*support, ...)
    shape = [1] * gathered.ndim
    shape[axis], shape[axis + 1] = weights.shape
    return (gathered * weights.reshape(shape)).sum(axis=axis + 1)


def whole_raster(data, scale, model):
    if model == "nearest":
        return np.repeat(np.repeat(data, scale, axis=1), scale, axis=2)
    kernel, support = {"bicubic": (keys_cubic, 2), "lanczos": (lanczos3, 3)}[model]
    image = data.astype(np.float64)
    return resample_axis(resample_axis(image, 1, scale, kernel, support), 2, scale, kernel, support)


# --- exactness over many geometries --------------------------------------------------------------
GEOMETRIES = [
    dict(tile=16, overlap=0, region=16, halo=0),
    dict(tile=16, overlap=4, region=32, halo=0),
    dict(tile=16, overlap=8, region=24, halo=0),
    dict(tile=13, overlap=5, region=7, halo=0),
    dict(tile=16, overlap=6, region=20, halo=3),
    dict(tile=8, overlap=2, region=9, halo=8),
    dict(tile=64, overlap=0, region=64, halo=0),  # raster smaller than one tile
]
SHAPES = [(37, 53), (32, 48), (5, 3), (1, 1)]


@pytest.mark.parametrize(
    "geometry", GEOMETRIES, ids=lambda g: "t{tile}o{overlap}r{region}h{halo}".format(**g)
)
@pytest.mark.parametrize("height,width", SHAPES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_nearest_is_bit_exact(tmp_path, geometry, height, width, dtype):
    data = raster_content(width, height, 2, dtype)
    src = make_raster(tmp_path / "in.tif", data=data)
    out, _ = upscale(src, tmp_path / "out.tif", model="nearest", scale=3, **geometry)
    np.testing.assert_array_equal(out, whole_raster(data, 3, "nearest"))


@pytest.mark.parametrize(
    "geometry", GEOMETRIES, ids=lambda g: "t{tile}o{overlap}r{region}h{halo}".format(**g)
)
@pytest.mark.parametrize("height,width", [(37, 53), (5, 3)])
@pytest.mark.parametrize("model", ["bicubic", "lanczos"])
def test_kernels_equal_the_whole_raster_result(tmp_path, geometry, height, width, model):
    data = raster_content(width, height, 3, "float32")
    src = make_raster(tmp_path / "in.tif", data=data)
    out, _ = upscale(src, tmp_path / "out.tif", model=model, scale=4, **geometry)
    expected = whole_raster(data, 4, model)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)


def test_integer_output_is_rounded_and_clipped_to_the_dtype(tmp_path):
    data = np.zeros((1, 12, 12), dtype="uint8")
    data[:, :, 6:] = 255  # a step edge rings past 0 and 255 under bicubic
    src = make_raster(tmp_path / "in.tif", data=data)
    out, profile = upscale(
        src, tmp_path / "out.tif", model="bicubic", scale=4, tile=5, overlap=2, region=6
    )
    reference = whole_raster(data, 4, "bicubic")
    assert reference.min() < 0 and reference.max() > 255
    assert profile["dtype"] == "uint8"
    assert np.abs(out.astype(int) - np.clip(np.rint(reference), 0, 255)).max() <= 1


def test_result_does_not_depend_on_worker_count(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=70, height=45, dtype="uint16")
    one, _ = upscale(
        src, tmp_path / "one.tif", model="bicubic", region=16, tile=16, overlap=4, workers=1
    )
    two, _ = upscale(
        src, tmp_path / "two.tif", model="bicubic", region=16, tile=16, overlap=4, workers=2
    )
    np.testing.assert_array_equal(one, two)


# --- georeferencing, nodata, dtypes, bands -------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("count", [1, 3, 4])
@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
def test_georeferencing_and_dtype_are_kept(tmp_path, dtype, count, transform):
    src = make_raster(
        tmp_path / "in.tif",
        width=21,
        height=17,
        count=count,
        dtype=dtype,
        transform=transform,
        crs="EPSG:32633",
        nodata=7,
    )
    _, profile = upscale(src, tmp_path / "out.tif", model="bicubic", scale=4)
    assert profile["crs"].to_epsg() == 32633
    assert profile["transform"].almost_equals(transform @ transform.scale(0.25))
    assert (profile["width"], profile["height"], profile["count"]) == (84, 68, count)
    assert profile["dtype"] == dtype and profile["nodata"] == 7
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(src) as inp:
        # the same ground point falls on the same pixel content
        assert out.xy(0, 0, offset="ul") == inp.xy(0, 0, offset="ul")
        assert out.xy(68, 84, offset="ul") == pytest.approx(inp.xy(17, 21, offset="ul"))


@pytest.mark.parametrize(
    "dtype,nodata", [("uint16", 0), ("float32", -9999.0), ("float32", float("nan"))]
)
def test_nodata_stays_nodata_and_never_leaks(tmp_path, dtype, nodata):
    data = 1000 + raster_content(30, 26, 2, "uint8").astype(dtype)  # values 1000..1255
    data[:, 8:14, 5:12] = nodata
    data[0, 20, 20] = nodata  # a single pixel in one band only
    src = make_raster(tmp_path / "in.tif", data=data, nodata=nodata)
    out, profile = upscale(
        src, tmp_path / "out.tif", model="bicubic", scale=4, tile=8, overlap=3, region=10
    )
    missing = np.isnan(data) if np.isnan(nodata) else data == nodata
    expected_missing = np.repeat(np.repeat(missing, 4, axis=1), 4, axis=2)
    out_missing = np.isnan(out) if np.isnan(nodata) else out == nodata
    np.testing.assert_array_equal(out_missing, expected_missing)
    valid = out[~out_missing]
    assert valid.min() > 900 and valid.max() < 1400  # no pull towards the nodata value
    assert np.isnan(profile["nodata"]) if np.isnan(nodata) else profile["nodata"] == nodata


def test_band_selection_orders_the_output(tmp_path):
    data = raster_content(20, 10, 4, "uint8")
    src = make_raster(tmp_path / "in.tif", data=data)
    out, profile = upscale(src, tmp_path / "out.tif", model="nearest", bands="3,1")
    assert profile["count"] == 2
    np.testing.assert_array_equal(out, whole_raster(data[[2, 0]], 4, "nearest"))


def test_scan_without_georeferencing_stays_without(tmp_path):
    data = raster_content(24, 16, 3, "uint8")
    src = tmp_path / "scan.png"
    with rasterio.open(src, "w", driver="PNG", width=24, height=16, count=3, dtype="uint8") as dst:
        dst.write(data)
    out, profile = upscale(src, tmp_path / "scan_x4.tif", model="nearest")
    assert profile["crs"] is None and profile["transform"].is_identity
    np.testing.assert_array_equal(out, whole_raster(data, 4, "nearest"))


def test_cog_output_is_a_cog_with_overviews(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=200, height=150, count=3, dtype="uint8")
    out_path = tmp_path / "out.tif"
    out, profile = upscale(src, out_path, model="nearest", output_format="COG")
    with rasterio.open(out_path) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.overviews(1)
        assert cog.crs.to_epsg() == 32633
    np.testing.assert_array_equal(out, whole_raster(read_raster(src)[0], 4, "nearest"))


def test_zarr_output_holds_the_pixels_and_georeferencing(tmp_path):
    import zarr

    src = make_raster(tmp_path / "in.tif", width=30, height=20, count=2, dtype="int16", nodata=-1)
    run_plan(plan_upscale(src, tmp_path / "out.zarr", model="nearest", scale=2))
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(group["data"][:], whole_raster(read_raster(src)[0], 2, "nearest"))
    assert group.attrs["transform"] == list(NORTH_UP @ NORTH_UP.scale(0.5))[:6]
    assert group.attrs["nodata"] == -1 and "32633" in group.attrs["crs_wkt"]


def test_creation_options_override_the_defaults(tmp_path):
    src = make_raster(tmp_path / "in.tif")
    upscale(
        src,
        tmp_path / "out.tif",
        model="nearest",
        creation_overrides={"compress": "ZSTD", "BLOCKXSIZE": "256", "BLOCKYSIZE": "256"},
    )
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.profile["compress"] == "zstd" and out.block_shapes[0] == (256, 256)


def test_workdir_is_removed_after_success_unless_kept(tmp_path):
    src = make_raster(tmp_path / "in.tif")
    upscale(src, tmp_path / "a.tif", model="nearest")
    assert not (tmp_path / "a.tif.tiler").exists()
    upscale(src, tmp_path / "b.tif", model="nearest", keep_workdir=True)
    assert (tmp_path / "b.tif.tiler" / "zarr.json").is_file()


def test_a_kept_workdir_serves_another_output_format_without_recomputing(tmp_path):
    import zarr

    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint16")
    workdir = tmp_path / "work"
    first = run_plan(
        plan_upscale(src, tmp_path / "a.tif", model="bicubic", region=16),
        workdir=workdir,
        keep_workdir=True,
    )
    second = run_plan(
        plan_upscale(src, tmp_path / "b.zarr", model="bicubic", region=16), workdir=workdir
    )
    assert first.stages[0].computed == first.stages[0].total > 1
    assert second.resumed and second.stages[0].computed == 0
    data = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["data"][:]
    np.testing.assert_array_equal(data, read_raster(tmp_path / "a.tif")[0])
    assert not workdir.exists()


def test_an_empty_folder_given_as_workdir_is_emptied_not_deleted(tmp_path):
    src = make_raster(tmp_path / "in.tif")
    folder = tmp_path / "mine"
    folder.mkdir()
    run_plan(plan_upscale(src, tmp_path / "out.tif", model="nearest"), workdir=folder)
    assert folder.is_dir() and not any(folder.iterdir())
    assert (tmp_path / "out.tif").is_file()


class _KeysRead:
    """A Zarr local store that records the chunk keys read."""

    def __new__(cls, root):
        from zarr.storage import LocalStore

        class Recording(LocalStore):
            keys: list = []

            async def get(self, key, prototype, byte_range=None):
                self.keys.append(key)
                return await super().get(key, prototype, byte_range)

        return Recording(root)


@pytest.mark.parametrize(
    "region, halo, chunk", [(32, 6, 16), (32, 20, 16), (30, 5, 16), (24, 4, 24)]
)
def test_assembly_reads_only_the_stored_pieces_over_its_chunk(tmp_path, region, halo, chunk):
    """Region extents are stored in blocks chunked like the output: an output chunk's assembly
    reads one Zarr chunk per region touching it (when regions are whole chunks), and blends to
    the same values as blending the whole extents."""
    import contextlib
    import types

    import zarr

    from tiler.geometry.blend import Blender
    from tiler.geometry.grid import Box, Span, TileGrid
    from tiler.geometry.weights import region_profile
    from tiler.workdir import arrays as engine
    from tiler.workdir.store import FAST_ZSTD

    grid = TileGrid(80, 96, 16, 4, region, halo)
    plan = types.SimpleNamespace(
        grid=types.SimpleNamespace(chunk=chunk, region=region, halo=halo), tile_grid=lambda: grid
    )
    store = _KeysRead(tmp_path / "w.zarr")
    group = zarr.open_group(store=store, mode="w")
    group.create_array(
        "regions", compressors=FAST_ZSTD, **engine.regions_spec(plan, 2, 1)["regions"]
    )
    workdir = types.SimpleNamespace(array=lambda name: group[name], writing=contextlib.nullcontext)
    rng = np.random.default_rng(0)
    extents = {}
    for r in grid.regions():
        extents[r.index] = rng.standard_normal((2, *r.extent.shape)).astype(np.float32)
        engine.write_extent(workdir, grid, r.index, extents[r.index])
    for index in np.ndindex(grid.chunk_shape(chunk)):
        core = grid.chunk_box(index, chunk)
        store.keys.clear()
        values, _ = engine.blend_regions(workdir, grid, core, 1, 2)
        expected = Blender(core, 2)
        touching = [
            (ry, rx)
            for ry in grid.rows.regions_touching(core.y)
            for rx in grid.cols.regions_touching(core.x)
        ]
        for ry, rx in touching:
            extent = grid.region_at(ry, rx).extent
            weights = np.outer(
                region_profile(extent.y.start, extent.y.stop, 80, halo),
                region_profile(extent.x.start, extent.x.stop, 96, halo),
            )
            expected.add(extent, extents[ry, rx], np.ones((1, 1, 1), bool), weights)
        np.testing.assert_allclose(values, expected.result(core)[0], rtol=0, atol=1e-6)
        chunk_keys = [key for key in store.keys if key.startswith("regions/c/")]
        assert len(chunk_keys) <= 4 * len(touching)
        for key in chunk_keys:  # regions/c/ry/rx/band/by/bx: a chunk-sized piece of a block
            ry, rx, _, by, bx = (int(part) for part in key.split("/")[2:])
            extent = grid.region_at(ry, rx).extent
            y0 = extent.y.start // chunk * chunk + by * chunk  # the block starts on a chunk line
            x0 = extent.x.start // chunk * chunk + bx * chunk
            piece = Box(Span(y0, y0 + chunk), Span(x0, x0 + chunk))
            assert piece.intersection(core) is not None, (index, key)
            if region % chunk == 0:  # blocks line up with the output chunks: one piece per region
                assert piece.intersection(core) == core and len(chunk_keys) == len(touching)


def test_stages_without_the_model_use_every_core_next_to_a_gpu():
    """Two threads share a GPU's model; assembly runs on every core meanwhile idle; --workers
    holds for every stage; on a CPU every stage has one thread per core."""
    from tiler.execution.run import worker_counts

    assert worker_counts("cuda", 16, None) == (2, 16)
    assert worker_counts("cpu", 16, None) == (16, 16)
    assert worker_counts("cuda", 16, 3) == (3, 3)


def test_thread_executor_runs_each_stage_on_its_own_thread_count():
    import threading
    import time

    from tiler.execution.threads import ThreadExecutor

    class Task:
        stages = ("denoise", "assemble")
        unit_shapes = {"denoise": (1, 8), "assemble": (1, 8)}
        unit_names = {"denoise": "region", "assemble": "chunk"}

        def __init__(self):
            self.lock, self.running, self.most = threading.Lock(), 0, {}

        def _unit(self, stage):
            with self.lock:
                self.running += 1
                self.most[stage] = max(self.most.get(stage, 0), self.running)
            time.sleep(0.05)
            with self.lock:
                self.running -= 1

        def denoise(self, unit):
            self._unit("denoise")

        def assemble(self, unit):
            self._unit("assemble")

    task = Task()
    executor = ThreadExecutor(task, 2, {"assemble": 4})
    for stage in task.stages:
        report = executor.run_stage(stage, 8, [(0, i) for i in range(8)], progress=False)
        assert report.computed == 8
    assert task.most == {"denoise": 2, "assemble": 4}
