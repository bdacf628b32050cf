"""The seam report (`tiler qa`): invisible seams score 1, planted steps score above 1 at the right
place, blurred boundary bands score below 1; reading stays windowed."""

import json
import math

import numpy as np
import pytest
import rasterio
from conftest import make_raster, run_tiler, shown_lines

from tiler import quality
from tiler.execution.export import PLAN_TAG
from tiler.execution.run import run_plan
from tiler.quality import heatmap, seams
from tiler.quality.seams import SeamGeometry, seam_report
from tiler.tasks import plan_upscale
from tiler.workdir.plan import plan_from_json

GEOMETRY = dict(tile=32, overlap=8, region=48, halo=8)  # latent (= input) px; stride 24


def smooth_content(width, height, count=2):
    """Oblique waves over many periods: the mean |step| across any column or row is about the
    same."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = [
        300
        + 100 * np.sin(2 * np.pi * (xx * (0.07 + 0.01 * b) + yy * 0.05))
        + 80 * np.sin(2 * np.pi * (xx * 0.03 - yy * (0.11 + 0.01 * b)))
        + 0.5 * xx
        for b in range(count)
    ]
    return np.stack(bands).astype(np.float32)


@pytest.fixture(scope="module")
def smooth_run(tmp_path_factory):
    """(output path, its plan JSON): a smooth 96 x 80 raster upscaled 4x with bicubic."""
    folder = tmp_path_factory.mktemp("qa")
    src = make_raster(folder / "in.tif", data=smooth_content(96, 80))
    out = folder / "out.tif"
    run_plan(plan_upscale(src, out, model="bicubic", scale=4, **GEOMETRY))
    with rasterio.open(out) as ds:
        return out, ds.tags()[PLAN_TAG]


def tile_boundaries(plan_json):
    """Output px of the tile boundaries per axis, worked out by hand from the plan's numbers."""
    plan = plan_from_json(plan_json)
    stride, tile, s = plan.grid.tile - plan.grid.overlap, plan.grid.tile, plan.scale
    axes = {}
    for name, length in (("x", plan.input.width), ("y", plan.input.height)):
        edges = set()
        k = 0
        while k == 0 or (k - 1) * stride + tile < length:
            edges |= {k * stride, k * stride + tile}
            k += 1
        axes[name] = sorted(e * s for e in edges if 0 < e < length)
    return axes


def gentle_ramp(width, height):
    """A smooth gradient with small steps between pixels (about 0.3 to 0.8 per px)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = (
        0.5 * xx + 0.3 * yy + 10 * np.sin(2 * np.pi * xx / 150) + 8 * np.cos(2 * np.pi * yy / 110)
    )
    return np.stack([ramp, 2 * ramp]).astype(np.float32)


def write_like(path, plan_json, data, nodata=None):
    """A GeoTIFF with ``data`` and a copied plan: what tiler would have written."""
    make_raster(path, data=data, nodata=nodata)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(**{PLAN_TAG: plan_json})
    return path


def test_smooth_bicubic_output_has_no_seams(smooth_run):
    out, plan_json = smooth_run
    report = seam_report(out)
    print("smooth:", report.index, report.strength)
    for kind in ("tile", "region", "all"):
        assert report.index[kind] == pytest.approx(1.0, abs=0.03)
        assert report.strength[kind] < 0.03
    axes = tile_boundaries(plan_json)
    assert report.boundaries["tile"] == len(axes["x"]) + len(axes["y"]) == 10
    assert report.boundaries["region"] == 2  # x = y = 48 * 4
    assert report.boundaries["all"] == 10  # region boundaries are tile boundaries here
    assert report.boundaries["decode"] == 0 and math.isnan(report.index["decode"])  # no decoder
    assert report.remedies() == []


def test_planted_steps_at_tile_boundaries_are_found(smooth_run, tmp_path):
    _, plan_json = smooth_run
    axes = tile_boundaries(plan_json)
    data = gentle_ramp(384, 320)
    yy, xx = np.mgrid[0:320, 0:384]
    for k, x in enumerate(axes["x"]):
        data += np.where(xx >= x, 4.0 + k, 0.0).astype(np.float32)
    for k, y in enumerate(axes["y"]):
        data += np.where(yy >= y, 3.0 + k, 0.0).astype(np.float32)
    report = seam_report(write_like(tmp_path / "steps.tif", plan_json, data))
    print("steps:", report.index, report.worst_segments[0])
    assert report.index["tile"] > 3 and report.strength["tile"] > 1
    worst = report.worst_segments[0]
    assert worst.ratio > 3
    if worst.orientation == "vertical":
        assert worst.x0 in axes["x"]
    else:
        assert worst.y0 in axes["y"]
    # the largest planted step (last vertical line, 4 + 5) is the worst vertical segment
    vertical = [s for s in report.worst_segments if s.orientation == "vertical"]
    assert not vertical or vertical[0].x0 == axes["x"][-1]


def test_steps_at_decode_tile_edges_score_as_decode_seams(smooth_run, tmp_path):
    """Decode boundaries lie on their own grid (multiples of the decode tile): steps planted there
    raise the decode index, not the tile index."""
    _, plan_json = smooth_run
    geometry = SeamGeometry(tile=32, overlap=8, scale=4, region=48, decode_tile=22)
    decode_lines = [88, 176, 264, 352]  # 22 latent px apart, x 4; none is a tile or region line
    data = smooth_content(384, 320)
    xx = np.arange(384)
    for x in decode_lines:
        data += np.where(xx >= x, 80.0, 0.0).astype(np.float32)
    report = seam_report(write_like(tmp_path / "decode.tif", plan_json, data), plan=geometry)
    print("decode steps:", report.index)
    assert report.boundaries["decode"] == 4 + 3  # x = 88..352, y = 88..264
    assert report.index["decode"] > 1.5 and report.index["tile"] == pytest.approx(1.0, abs=0.05)
    worst = report.worst_segments[0]
    assert (
        worst.kinds == ("decode",) and worst.orientation == "vertical" and worst.x0 in decode_lines
    )
    assert len(report.remedies()) == 1 and "--decode-halo" in report.remedies()[0]
    shown = run_tiler(
        "qa",
        tmp_path / "decode.tif",
        "--tile",
        32,
        "--overlap",
        8,
        "--region",
        48,
        "--scale",
        4,
        "--decode-tile",
        22,
    )
    assert shown.returncode == 0, shown.stderr
    assert [line for line in shown.stdout.splitlines() if line.startswith("hint:")] == [
        f"hint: {report.remedies()[0]}"
    ]


def box_blur(image, radius):
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (2 * radius + 1, 2 * radius + 1), axis=(1, 2)
    )
    return windows.mean(axis=(-2, -1))


def test_blurred_boundary_bands_score_below_one(smooth_run, tmp_path):
    _, plan_json = smooth_run
    axes = tile_boundaries(plan_json)
    rng = np.random.default_rng(1)
    data = smooth_content(384, 320) + 20 * rng.standard_normal((2, 320, 384))
    band = np.zeros((320, 384), dtype=bool)
    for x in axes["x"]:
        band[:, x - 4 : x + 4] = True
    for y in axes["y"]:
        band[y - 4 : y + 4, :] = True
    data = np.where(band, box_blur(data, 2), data).astype(np.float32)
    report = seam_report(write_like(tmp_path / "blurred.tif", plan_json, data))
    print("blurred:", report.index, report.worst_segments[0].ratio)
    assert report.index["tile"] < 0.75 and report.index["all"] < 0.75
    assert report.worst_segments[0].ratio < 0.75


def test_nodata_pairs_are_skipped_and_result_matches_whole_array(smooth_run, tmp_path):
    """The streamed, windowed measure equals the definition computed on the whole array."""
    _, plan_json = smooth_run
    rng = np.random.default_rng(2)
    data = (smooth_content(384, 320) + 10 * rng.standard_normal((2, 320, 384))).astype(np.float32)
    data[:, 100:180, 60:200] = -9999  # a nodata hole across boundaries
    data[0, 5:9, :] = np.nan
    report = seam_report(write_like(tmp_path / "holes.tif", plan_json, data, nodata=-9999))
    axes = tile_boundaries(plan_json)
    image = data.astype(np.float64)
    image[image == -9999] = np.nan

    def steps(
        axis, p
    ):  # |I[p] - I[p - 1]| across a vertical (x) or horizontal (y) line, valid only
        a, b = (
            (image[:, :, p - 1], image[:, :, p])
            if axis == "x"
            else (image[:, p - 1, :], image[:, p, :])
        )
        d = np.abs(b - a)
        return d[~np.isnan(d)]

    b_parts, r_parts = [], []
    for axis, positions in axes.items():
        for p in positions:
            b_parts.append(steps(axis, p))
            r_parts.append(steps(axis, p + 48))  # half a stride (12 latent px) later, inside here
    expected = np.concatenate(b_parts).mean() / np.concatenate(r_parts).mean()
    assert report.index["tile"] == pytest.approx(expected, rel=1e-9)


def test_zarr_output_reads_the_same(smooth_run, tmp_path):
    import zarr

    out, plan_json = smooth_run
    with rasterio.open(out) as ds:
        pixels = ds.read()
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="w")
    group.create_array("data", shape=pixels.shape, chunks=(1, 128, 128), dtype=pixels.dtype)[:] = (
        pixels
    )
    group.attrs.update({PLAN_TAG: plan_json, "nodata": None})
    tiff, store = seam_report(out), seam_report(tmp_path / "out.zarr")
    assert store.index == pytest.approx(tiff.index, rel=1e-12, nan_ok=True)


def test_heatmap_is_a_small_rgb_png(smooth_run, tmp_path, monkeypatch):
    out, plan_json = smooth_run
    report = seam_report(out, heatmap_path=tmp_path / "seams.png")
    assert report.heatmap == str(tmp_path / "seams.png")
    with rasterio.open(tmp_path / "seams.png") as png:
        assert png.driver == "PNG" and png.count == 3 and png.dtypes == ("uint8",) * 3
        assert max(png.width, png.height) <= 1024 and (png.width, png.height) == (384, 320)
        image = png.read()
    assert tuple(image[:, 10, 10]) == heatmap.BACKGROUND  # away from every boundary
    assert image[:, 160, 96].min() > 200  # tile boundary x = 96, invisible seam: near white
    # a larger footprint is scaled down to the longest side; planted steps show red
    monkeypatch.setattr(heatmap, "HEATMAP_SIDE", 128)
    data = gentle_ramp(384, 320) + np.where(np.arange(384) >= 96, 50.0, 0.0).astype(np.float32)
    seam_report(
        write_like(tmp_path / "steps.tif", plan_json, data), heatmap_path=tmp_path / "small.png"
    )
    with rasterio.open(tmp_path / "small.png") as png:
        assert (png.width, png.height) == (128, 107)
        assert tuple(png.read()[:, 50, 32]) == (255, 0, 0)  # x = 96 -> column 32: ratio >= 2


def test_ratio_colour_ramp():
    colours = quality.ratio_colours([0.25, 0.5, 1.0, math.sqrt(2), 2.0, 8.0, math.nan])
    expected = [
        (0, 0, 255),
        (0, 0, 255),
        (255, 255, 255),
        (255, 128, 128),
        (255, 0, 0),
        (255, 0, 0),
        (128, 128, 128),
    ]
    np.testing.assert_allclose(colours.astype(int), expected, atol=1)
    assert colours.dtype == np.uint8


def test_reading_is_windowed_in_thin_strips(smooth_run, monkeypatch):
    out, _ = smooth_run
    whole = seam_report(out)
    shapes = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, window=None, **kwargs):
        assert window is not None, "read without a window: the whole raster"
        shapes.append((int(window.height), int(window.width)))
        return original(self, *args, window=window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    monkeypatch.setattr(seams, "BLOCK", 100)
    blocked = seam_report(out)
    assert shapes and all(min(shape) == 2 and max(shape) <= 100 for shape in shapes)
    assert blocked.index == pytest.approx(whole.index, rel=1e-12, nan_ok=True)


def test_cli_prints_json_and_writes_the_heatmap(smooth_run, tmp_path):
    out, _ = smooth_run
    result = run_tiler("qa", out, "--json", "--heatmap", tmp_path / "h.png")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {
        "index",
        "strength",
        "boundaries",
        "worst_segments",
        "segments",
        "heatmap",
        "geometry",
        "size",
        "remedies",
    } <= set(data)
    assert (
        set(data["index"]) == set(data["strength"]) == set(data["boundaries"]) == set(quality.KINDS)
    )
    assert {"x0", "y0", "ratio", "position", "orientation", "kinds"} <= set(
        data["worst_segments"][0]
    )
    assert data["heatmap"] == str(tmp_path / "h.png") and (tmp_path / "h.png").is_file()
    again = run_tiler("qa", out, "--heatmap", tmp_path / "h.png")  # refuses to overwrite
    assert again.returncode == 1 and len(shown_lines(again.stderr)) == 1
    assert "--overwrite" in again.stderr


def test_cli_refuses_a_raster_not_written_by_tiler_unless_described(tmp_path):
    src = make_raster(tmp_path / "baseline.tif", data=smooth_content(96, 80))
    result = run_tiler("qa", src)
    lines = shown_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "not written by tiler" in lines[0] and str(src) in lines[0] and "--tile" in lines[0]
    assert not (tmp_path / "baseline.tif.seams.png").exists()
    described = run_tiler("qa", src, "--json", "--tile", 8, "--overlap", 2, "--scale", 1)
    assert described.returncode == 0, described.stderr
    data = json.loads(described.stdout)
    assert data["boundaries"]["region"] == 0 and data["boundaries"]["tile"] > 0
    assert data["boundaries"]["decode"] == 0
    assert (tmp_path / "baseline.tif.seams.png").is_file()
    decoded = run_tiler("qa", src, "--tile", 8, "--scale", 1, "--decode-tile", 32, "--overwrite")
    assert decoded.returncode == 0, decoded.stderr
    assert "decode tile 32" in decoded.stdout and "decode 4" in decoded.stdout  # x, y = 32, 64
    alone = run_tiler("qa", src, "--decode-tile", 32)
    assert alone.returncode == 2 and "--tile" in shown_lines(alone.stderr)[0]


def test_library_error_for_missing_plan_names_the_file(tmp_path):
    src = make_raster(tmp_path / "plain.tif")
    with pytest.raises(quality.NotATilerOutput, match="plain.tif: no TILER_PLAN metadata"):
        seam_report(src)
    report = seam_report(src, plan=SeamGeometry(tile=8, overlap=0, scale=1, region=16))
    assert report.boundaries["region"] == 2 + 1  # x = 16, 32; y = 16
