"""Bad values are refused before any work (issue 16, item 3): exit 2, one line naming the option
and what was expected, nothing under OUTPUT and no workdir."""

from __future__ import annotations

import pytest
from conftest import make_raster, run_tiler, shown_lines

CLASSICAL = [
    (("--scale", "0"), "--scale", "expected an upscaling factor >= 1"),
    (("-b", ""), "-b/--bidx", "empty; expected band numbers"),
    (("--co", "BOGUS=1"), "--co", "does not support creation option BOGUS"),
    (("--co", "COMPRESS=NOPE"), "--co", "'NOPE' is an unexpected value for COMPRESS"),
    (("--co", "COMPRESS="), "--co", "'' is an unexpected value for COMPRESS"),
    (("--co", "BLOCKXSIZE=abc"), "--co", "'abc' is an unexpected value for BLOCKXSIZE"),
    (("--co", "BLOCKXSIZE=7"), "--co", "multiples of 16"),
    (("--co", "PREDICTOR=3"), "--co", "PREDICTOR=3 is only supported with Float32 or Float64"),
    (("--format", "COG", "--co", "COMPRESS=NOPE"), "--co", "GDAL's COG driver"),
    (("--json",), "--json", "use it with --dry-run"),
    (("--region", "10000000"), "--region", "one region would need about"),
]


@pytest.mark.parametrize(("args", "option", "text"), CLASSICAL, ids=lambda v: str(v))
def test_bad_values_of_a_classical_run_are_refused_before_any_work(tmp_path, args, option, text):
    src = make_raster(tmp_path / "in.tif", width=16, height=12, dtype="uint8")
    out = tmp_path / "out.tif"
    result = run_tiler("upscale", src, out, *args)
    lines = shown_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"invalid value for {option}" in lines[0] and text in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]  # nothing written


def test_jpeg_on_16_bit_data_and_creation_options_on_zarr_are_refused(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=16, height=12, dtype="uint16")
    jpeg = run_tiler("upscale", src, tmp_path / "out.tif", "--co", "COMPRESS=JPEG")
    assert jpeg.returncode == 2 and "COMPRESS=JPEG takes 8-bit data (uint8)" in jpeg.stderr
    zarr = run_tiler("upscale", src, tmp_path / "out.zarr", "--co", "COMPRESS=ZSTD")
    assert zarr.returncode == 2 and "a Zarr output takes only OVERVIEWS=AUTO|YES|NO" in zarr.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


LDM = [
    (("--range=-inf,5",), "--range", "expected two finite numbers"),
    (("--range", "0,1e400"), "--range", "expected two finite numbers"),
    (("--eta", "nan"), "--eta", "expected a finite number 0..1"),
    (("--eta", "1e308"), "--eta", "expected a finite number 0..1"),
    (("--steps", "1001"), "--steps", "has 1000 steps; expected at most 1000"),
    (("--sampler", "DDPMScheduler"), "--sampler", "draws its own random noise"),
    (("--tile", "1000000000"), "--tile", "one UNet tile batch would need about"),
    (("--decode-tile", "100000"), "--decode-tile", "one first-stage window batch would need"),
    (("--region", "10000000"), "--region", "one region canvas would need about"),
]


@pytest.mark.parametrize(("args", "option", "text"), LDM, ids=lambda v: str(v))
def test_bad_sampling_values_are_refused_by_plan_and_upscale(
    tmp_path, tiny_model, args, option, text
):
    src = make_raster(tmp_path / "in.tif", width=16, height=12, dtype="uint8")
    for command in ("plan", "upscale"):
        result = run_tiler(command, src, tmp_path / "out.tif", "--model", tiny_model, *args,
                           "--device", "cpu")  # fmt: skip
        lines = shown_lines(result.stderr)
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"invalid value for {option}" in lines[0] and text in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_a_mask_dilation_that_cannot_fit_is_refused_even_in_a_dry_run(tmp_path):
    from tiny_models import save_tiny_inpaint_model

    model = save_tiny_inpaint_model(tmp_path / "model")
    src = make_raster(tmp_path / "in.tif", width=32, height=32, dtype="uint8")
    mask = make_raster(tmp_path / "mask.tif", width=32, height=32, count=1, dtype="uint8")
    result = run_tiler("inpaint", src, tmp_path / "out.tif", "--model", model, "--mask", mask,
                       "--dilate", "1000000", "--dry-run", "--device", "cpu")  # fmt: skip
    lines = shown_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "invalid value for --dilate: one mask dilation would need about" in lines[0]
    assert "of memory" in lines[0]


def test_plan_shows_the_memory_of_the_largest_unit(tmp_path, tiny_model):
    import json

    src = make_raster(tmp_path / "in.tif", width=16, height=12, dtype="uint8")
    for model in ("bicubic", tiny_model):
        result = run_tiler("plan", src, "--model", model, "--json", "--device", "cpu")
        summary = json.loads(result.stdout)
        assert summary["unit_memory_max"] > 0 and summary["unit_memory_max_of"], summary
    text = run_tiler("plan", src, "--model", tiny_model, "--device", "cpu").stdout
    assert "unit_memory_max" in text and "GiB (about; one " in text
