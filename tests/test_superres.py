"""LDM super-resolution through the engine, with a tiny random model of the real model's classes and
channel layout, saved with save_pretrained and loaded through the same code path as a hub model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import (
    ROTATED,
    kill_part_way,
    make_raster,
    read_raster,
    run_tiler,
    shown_lines,
)

from tiler.errors import BadParameter
from tiler.execution.run import run_plan
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.tasks import plan_upscale

# Small geometry: several regions with halos, several overlapping tiles per region.
GRID = dict(tile=16, overlap=4, region=24, halo=4)
FAST = DiffusionOptions(steps=3, decode_tile=16, decode_halo=4)
CLI_GRID = (
    "--tile",
    "16",
    "--overlap",
    "4",
    "--region",
    "24",
    "--halo",
    "4",
    "--steps",
    "3",
    "--decode-tile",
    "16",
    "--decode-halo",
    "4",
)


def superres(src, dst, model, diffusion=FAST, batch_size=None, workers=1, **options):
    plan = plan_upscale(src, dst, model=str(model), diffusion=diffusion, **(GRID | options))
    run_plan(plan, workers=workers, runtime=RuntimeOptions(device="cpu", batch_size=batch_size))
    return read_raster(dst)


def test_output_is_georeferenced_4x_with_nodata_kept(tmp_path, tiny_model):
    data = make_raster(tmp_path / "unused.tif", width=45, height=38, dtype="uint16")
    pixels = read_raster(data)[0]
    pixels[:, 5:9, 30:40] = 0
    src = make_raster(tmp_path / "in.tif", data=pixels, nodata=0, transform=ROTATED)
    out, profile = superres(src, tmp_path / "out.tif", tiny_model)
    assert (profile["width"], profile["height"], profile["count"]) == (180, 152, 3)
    assert profile["dtype"] == "uint16" and profile["nodata"] == 0
    assert profile["crs"].to_epsg() == 32633
    assert profile["transform"].almost_equals(ROTATED @ ROTATED.scale(0.25))
    expected_missing = np.repeat(np.repeat(pixels == 0, 4, axis=1), 4, axis=2)
    np.testing.assert_array_equal(out == 0, expected_missing)


def test_output_chunk_size_does_not_change_a_bit(tmp_path, tiny_model):
    """Decode windows sit on a global grid: chunks of 8 (split windows, many units) or 64 agree."""
    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint8")
    small, _ = superres(src, tmp_path / "small.tif", tiny_model, chunk=8, workers=2)
    large, _ = superres(src, tmp_path / "large.tif", tiny_model, chunk=64)
    np.testing.assert_array_equal(small, large)


def test_batch_size_does_not_change_a_bit(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=40, height=33, dtype="uint8")
    one, _ = superres(src, tmp_path / "one.tif", tiny_model, batch_size=1)
    seven, _ = superres(src, tmp_path / "seven.tif", tiny_model, batch_size=7)
    np.testing.assert_array_equal(one, seven)
    assert one.std() > 0  # a real image, not a constant


def test_stochastic_steps_use_keyed_noise(tmp_path, tiny_model):
    """DDIM with eta > 0 injects noise each step: keyed noise keeps it batch- and worker-free."""
    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint8")
    options = DiffusionOptions(steps=3, eta=1.0, decode_tile=16, decode_halo=4)
    a, _ = superres(src, tmp_path / "a.tif", tiny_model, options, batch_size=2, workers=1)
    b, _ = superres(src, tmp_path / "b.tif", tiny_model, options, batch_size=5, workers=2)
    np.testing.assert_array_equal(a, b)
    other_seed = DiffusionOptions(steps=3, eta=1.0, seed=1, decode_tile=16, decode_halo=4)
    c, _ = superres(src, tmp_path / "c.tif", tiny_model, other_seed)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("sampler", ["dpm++", "euler", "unipc"])
def test_other_samplers_run(tmp_path, tiny_model, sampler):
    src = make_raster(tmp_path / "in.tif", width=20, height=20, dtype="uint8")
    options = DiffusionOptions(steps=3, sampler=sampler, decode_tile=16, decode_halo=4)
    out, _ = superres(src, tmp_path / "out.tif", tiny_model, options)
    assert out.shape == (3, 80, 80) and out.std() > 0


def test_single_band_is_repeated_into_the_model_and_averaged_out(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=20, height=18, count=1, dtype="float32")
    out, profile = superres(src, tmp_path / "out.tif", tiny_model)
    assert profile["count"] == 1 and profile["dtype"] == "float32" and np.isfinite(out).all()


def test_bad_band_count_scale_and_tile_are_usage_errors(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", count=4)
    with pytest.raises(BadParameter, match="takes 3 bands"):
        plan_upscale(src, tmp_path / "o.tif", model=str(tiny_model), diffusion=FAST)
    with pytest.raises(BadParameter, match="upscales by 4"):
        plan_upscale(
            src, tmp_path / "o.tif", model=str(tiny_model), bands="1,2,3", scale=2, diffusion=FAST
        )
    with pytest.raises(BadParameter, match="multiple of 4"):
        plan_upscale(
            src,
            tmp_path / "o.tif",
            model=str(tiny_model),
            bands="1,2,3",
            tile=18,
            overlap=4,
            diffusion=FAST,
        )
    with pytest.raises(BadParameter, match="draws its own random noise"):
        plan_upscale(
            src,
            tmp_path / "o.tif",
            model=str(tiny_model),
            bands="1,2,3",
            diffusion=DiffusionOptions(sampler="euler-a"),
        )
    with pytest.raises(BadParameter, match="unknown sampler"):
        plan_upscale(
            src,
            tmp_path / "o.tif",
            model=str(tiny_model),
            bands="1,2,3",
            diffusion=DiffusionOptions(sampler="magic"),
        )


def test_value_range_is_global_and_recorded_in_the_plan(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=30, height=20, dtype="uint16")
    plan = plan_upscale(src, tmp_path / "o.tif", model=str(tiny_model), diffusion=FAST)
    low, high = plan.diffusion.value_range
    data = read_raster(src)[0]
    assert data.min() <= low < high <= data.max()
    fixed = plan_upscale(
        src,
        tmp_path / "o.tif",
        model=str(tiny_model),
        diffusion=DiffusionOptions(value_range="0,65535"),
    )
    assert fixed.diffusion.value_range == (0.0, 65535.0)
    assert fixed.fingerprint != plan.fingerprint


def test_value_range_of_a_large_raster_samples_whole_blocks_over_all_of_it(tmp_path, monkeypatch):
    """Without overviews a large raster is sampled as whole blocks on a lattice (a decimated read
    would decompress every block); the estimate stays close to the whole raster's percentiles.
    With overviews, GDAL's decimated read of them is used."""
    from rasterio.io import DatasetReader

    from tiler.raster import sources as raster

    monkeypatch.setattr(raster, "SAMPLE_PX", 48 * 48)
    monkeypatch.setattr(raster, "SAMPLE_BLOCKS", 12)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:384, 0:512]
    data = (
        1000 + 600 * np.sin(xx / 50.0) * np.cos(yy / 70.0) + rng.normal(0, 40, (2, 384, 512))
    ).astype("uint16")
    src = make_raster(
        tmp_path / "big.tif", data=data, nodata=0, tiled=True, blockxsize=64, blockysize=64
    )
    windows = []
    original = DatasetReader.read

    def spy(self, *args, window=None, **kwargs):
        windows.append(window)
        return original(self, *args, window=window, **kwargs)

    monkeypatch.setattr(DatasetReader, "read", spy)
    low, high = raster.value_range(raster.describe(src), (1, 2))
    assert 10 <= len(windows) <= 12 and all(w is not None for w in windows)
    assert all(
        w.col_off % 64 == 0 and w.row_off % 64 == 0 and w.width == w.height == 64 for w in windows
    )
    assert len({w.col_off for w in windows}) >= 3 and len({w.row_off for w in windows}) >= 3
    true_low, true_high = np.percentile(data, (0.1, 99.9))
    assert abs(low - true_low) < 0.05 * (true_high - true_low)
    assert abs(high - true_high) < 0.05 * (true_high - true_low)

    with rasterio.open(src, "r+") as ds:
        ds.build_overviews([4])
    windows.clear()
    low, high = raster.value_range(raster.describe(src), (1, 2))
    assert windows == [None]  # one decimated read, served by the overview
    assert abs(low - true_low) < 0.05 * (true_high - true_low)
    assert abs(high - true_high) < 0.05 * (true_high - true_low)


SUMMARY = re.compile(
    r"computed denoise (\d+)/(\d+), assemble (\d+)/(\d+)(?:, decoder_stats \d+/\d+)?"
    r"(?:, block_means \d+/\d+)?, "
    r"decode (\d+)/(\d+)"
)


def test_killed_run_resumes_bit_identical(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=64, height=64, dtype="uint8")
    args = ("--model", tiny_model, "--device", "cpu", "--workers", "1", *CLI_GRID)
    reference = tmp_path / "reference.tif"
    assert run_tiler("upscale", src, reference, *args).returncode == 0

    out = tmp_path / "out.tif"
    kill_part_way(
        ("upscale", src, out, "-q", *args),
        Path(f"{out}.tiler"),
        tmp_path / "log",
        stage="denoise",
        after=2,
    )
    assert not out.exists()
    result = run_tiler("upscale", src, out, *args)
    assert result.returncode == 0, result.stderr
    counts = [int(n) for n in SUMMARY.search(shown_lines(result.stderr)[-1]).groups()]
    total = counts[1]
    assert 0 < counts[0] <= total - 2  # the regions done before the kill were not denoised again
    np.testing.assert_array_equal(read_raster(out)[0], read_raster(reference)[0])


def test_plan_reports_the_diffusion_settings(tmp_path, tiny_model):
    import json

    src = make_raster(tmp_path / "in.tif", width=50, height=40)
    result = run_tiler("plan", src, "--model", tiny_model, "--json", "--device", "cpu", *CLI_GRID)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["scale"] == 4 and summary["sampler"] == "ddim" and summary["steps"] == 3
    assert summary["unet_evaluations"] == summary["steps"] * summary["tiles_computed"]
    assert summary["model_dtype"] == "float32"


def test_offline_uncached_hub_model_is_a_one_line_error(tmp_path, monkeypatch):
    src = make_raster(tmp_path / "in.tif")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_tiler("upscale", src, tmp_path / "o.tif", "--model", "CompVis/not-cached-here")
    lines = shown_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1
    assert "not in the Hugging Face cache" in lines[0] and "--model DIR" in lines[0]
    assert not (tmp_path / "o.tif").exists()


def test_consecutive_runs_with_one_model_load_it_once(tmp_path, tiny_model, monkeypatch):
    """A workflow runs its files one after the other in one process: the model (and its compiled
    graphs) is loaded once; another model replaces it."""
    from tiny_models import save_tiny_sr_model

    from tiler.ldm import loading as models
    from tiler.ldm.runner import ModelRunner, _loaded_runner

    _loaded_runner.cache_clear()
    loads = []
    original = models.load_pipeline_model
    monkeypatch.setattr(
        models, "load_pipeline_model", lambda *a, **k: loads.append(a[0]) or original(*a, **k)
    )
    runtime = RuntimeOptions(device="cpu")
    plans = [
        plan_upscale(
            make_raster(tmp_path / f"in{i}.tif", seed=i),
            tmp_path / f"out{i}.tif",
            model=str(tiny_model),
            diffusion=FAST,
        )
        for i in range(2)
    ]
    first = ModelRunner.load(plans[0], runtime)
    assert ModelRunner.load(plans[1], runtime) is first and len(loads) == 1
    other = save_tiny_sr_model(tmp_path / "other", seed=1)
    plan = plan_upscale(tmp_path / "in0.tif", tmp_path / "o.tif", model=str(other), diffusion=FAST)
    assert ModelRunner.load(plan, runtime) is not first and len(loads) == 2


def test_shared_decoder_statistics_on_request(tmp_path, tiny_model):
    """--decode-norm shared (also the auto default, measured on trained weights): a one-unit
    decoder_stats stage measures the decoder's GroupNorm statistics once; every window then decodes
    with them. The output changes, and still does not depend on the output chunks or the thread
    count; --decode-norm window decodes each window with its own statistics."""
    from dataclasses import replace

    from tiler.tasks import stages

    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint8")
    shared = replace(FAST, decode_norm="shared")
    plan = plan_upscale(src, tmp_path / "p.tif", model=str(tiny_model), diffusion=shared, **GRID)
    assert plan.diffusion.shared_norm and stages(plan) == (
        "denoise",
        "assemble",
        "decoder_stats",
        "block_means",
        "decode",
    )
    default = plan_upscale(src, tmp_path / "p.tif", model=str(tiny_model), diffusion=FAST, **GRID)
    assert default.fingerprint == plan.fingerprint
    per_window = replace(FAST, decode_norm="window")
    own = plan_upscale(src, tmp_path / "p.tif", model=str(tiny_model), diffusion=per_window, **GRID)
    assert not own.diffusion.shared_norm and "decoder_stats" not in stages(own)
    assert own.fingerprint != plan.fingerprint
    small, _ = superres(
        src, tmp_path / "small.tif", tiny_model, diffusion=shared, chunk=8, workers=2
    )
    large, _ = superres(src, tmp_path / "large.tif", tiny_model, diffusion=shared, chunk=64)
    window, _ = superres(src, tmp_path / "window.tif", tiny_model, diffusion=per_window)
    np.testing.assert_array_equal(small, large)
    assert (small != window).mean() > 0.1
    with pytest.raises(BadParameter, match="decode_norm"):
        plan_upscale(
            src,
            tmp_path / "p.tif",
            model=str(tiny_model),
            diffusion=replace(FAST, decode_norm="global"),
            **GRID,
        )
