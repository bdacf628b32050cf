"""``tiler inpaint`` with a tiny model in tiler's model-directory format: unmasked pixels identical
to the input, only tiles near the mask computed (counted), results independent of batch size and
worker count, and clear errors for bad masks and models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NORTH_UP,
    assert_resumes_after_kill,
    make_raster,
    read_raster,
    run_tiler,
    shown_lines,
)
from test_errors import assert_no_output, assert_one_error
from tiny_models import save_tiny_inpaint_model

from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import run_plan
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.ldm.runner import ModelRunner
from tiler.raster.mask import MaskSpec
from tiler.tasks.inpaint import plan_inpaint

# small latent grid and few steps: seconds per run with the tiny models
GRID = dict(tile=8, overlap=2, region=8, halo=2)
FAST = DiffusionOptions(steps=3, decode_tile=8, decode_halo=2, device="cpu")
CLI = tuple(
    part
    for key, value in (
        GRID | {"steps": 3, "decode-tile": 8, "decode-halo": 2, "device": "cpu"}
    ).items()
    for part in (f"--{key}", str(value))
)


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory) -> Path:
    return save_tiny_inpaint_model(tmp_path_factory.mktemp("models") / "tiny-inpaint")


def mask_file(path, height, width, boxes, **options):
    area = np.zeros((1, height, width), dtype="uint8")
    for y0, y1, x0, x1 in boxes:
        area[0, y0:y1, x0:x1] = 1
    return make_raster(path, data=area, **options), area[0] > 0


def inpaint(src, dst, model, mask, batch_size=None, workers=1, **grid):
    plan = plan_inpaint(src, dst, model=str(model), mask=mask, diffusion=FAST, **(GRID | grid))
    run_plan(
        plan,
        runtime=RuntimeOptions(device="cpu", batch_size=batch_size),
        execution=ExecutionOptions(cluster="threads", workers=workers),
    )
    return read_raster(dst), plan


def test_unmasked_pixels_are_the_inputs_bit_for_bit(tmp_path, inpaint_model):
    src = make_raster(
        tmp_path / "in.tif", width=45, height=38, dtype="uint16"
    )  # not multiples of 4
    mask, area = mask_file(tmp_path / "mask.tif", 38, 45, [(5, 12, 30, 44), (30, 38, 0, 6)])
    (out, profile), _ = inpaint(
        src, tmp_path / "out.tif", inpaint_model, MaskSpec("file", str(mask))
    )
    data = read_raster(src)[0]
    np.testing.assert_array_equal(out[:, ~area], data[:, ~area])
    assert (out[:, area] != data[:, area]).mean() > 0.9
    assert (profile["width"], profile["height"], profile["dtype"]) == (45, 38, "uint16")
    assert profile["transform"] == NORTH_UP and profile["crs"].to_epsg() == 32633


def test_nodata_pixels_are_filled(tmp_path, inpaint_model):
    pixels = read_raster(make_raster(tmp_path / "base.tif", width=40, height=32))[0]
    pixels[:, 10:14, 8:20] = 0
    src = make_raster(tmp_path / "in.tif", data=pixels, nodata=0)
    (out, profile), _ = inpaint(src, tmp_path / "out.tif", inpaint_model, MaskSpec("nodata"))
    hole = (pixels == 0).any(axis=0)
    np.testing.assert_array_equal(out[:, ~hole], pixels[:, ~hole])
    assert profile["nodata"] == 0


def test_only_tiles_near_the_mask_are_computed(tmp_path, inpaint_model, monkeypatch):
    """Count the tiles that go through the UNet: the plan's count, a small part of the grid."""
    calls = []
    original = ModelRunner.unet_call
    monkeypatch.setattr(
        ModelRunner,
        "unet_call",
        lambda self, inputs, t: calls.append(inputs.shape[0]) or original(self, inputs, t),
    )
    src = make_raster(tmp_path / "in.tif", width=128, height=128)
    mask, _ = mask_file(tmp_path / "mask.tif", 128, 128, [(4, 10, 4, 10)])
    _, plan = inpaint(src, tmp_path / "out.tif", inpaint_model, MaskSpec("file", str(mask)))
    computed = sum(calls) // FAST.steps
    assert computed == plan.mask.tiles_touched == plan.summary()["tiles_computed"]
    assert 0 < computed <= plan.tile_grid().computed_tile_count() // 8
    assert plan.summary()["unet_evaluations"] == computed * FAST.steps


def test_the_encoder_sees_one_window_at_a_time(tmp_path, inpaint_model, monkeypatch):
    """Memory stays bounded whatever the region: the encoder codes windows of the decode tile plus
    its halo (in px: x f), never a region's whole canvas (besides the statistics' fixed sample)."""
    from tiler.tasks.ldm import STATS_SIDE

    sides = []
    original = ModelRunner.encode_pixels
    monkeypatch.setattr(
        ModelRunner,
        "encode_pixels",
        lambda self, pixels, norms=None: (
            sides.append(pixels.shape[2:]) or original(self, pixels, norms)
        ),
    )
    src = make_raster(tmp_path / "in.tif", width=160, height=128)
    mask, _ = mask_file(tmp_path / "mask.tif", 128, 160, [(40, 90, 50, 120)])
    _, plan = inpaint(
        src, tmp_path / "out.tif", inpaint_model, MaskSpec("file", str(mask)), region=32, halo=4
    )  # a canvas of about 40 x 40 latent px, windows of 12
    window = (FAST.decode_tile + 2 * FAST.decode_halo) * 4
    canvas = plan.tile_grid().region_at(0, 0).canvas
    assert min(canvas.shape) * 4 > window
    assert set(sides) == {(window, window), (STATS_SIDE * 4, STATS_SIDE * 4)}


def test_batch_size_and_workers_do_not_change_a_bit(tmp_path, inpaint_model):
    src = make_raster(tmp_path / "in.tif", width=40, height=36)
    mask, _ = mask_file(tmp_path / "mask.tif", 36, 40, [(6, 30, 10, 20)])
    spec = MaskSpec("file", str(mask), dilate=2)
    (one, _), _ = inpaint(src, tmp_path / "one.tif", inpaint_model, spec, batch_size=1)
    (many, _), _ = inpaint(src, tmp_path / "many.tif", inpaint_model, spec, batch_size=5, workers=2)
    np.testing.assert_array_equal(one, many)


def test_cli_runs_and_refuses_bad_masks(tmp_path, inpaint_model, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=40, height=32)
    out = tmp_path / "out.tif"
    mask, _ = mask_file(tmp_path / "mask.tif", 32, 40, [(3, 9, 3, 9)])
    ok = run_tiler("inpaint", src, out, "--model", inpaint_model, "--mask", mask, *CLI)
    assert ok.returncode == 0, ok.stderr
    assert shown_lines(ok.stderr)[-1].startswith(f"tiler: wrote {out}")

    empty, _ = mask_file(tmp_path / "empty.tif", 32, 40, [])
    target = tmp_path / "new.tif"
    assert_one_error(
        run_tiler("inpaint", src, target, "--model", inpaint_model, "--mask", empty, *CLI),
        1,
        str(empty),
        "the mask is empty: nothing to fill",
    )
    small, _ = mask_file(tmp_path / "small.tif", 16, 20, [(1, 2, 1, 2)], crs=None, transform=None)
    assert_one_error(
        run_tiler("inpaint", src, target, "--model", inpaint_model, "--mask", small, *CLI),
        1,
        str(small),
        "expected the input's 40 x 32 px",
    )
    assert_one_error(
        run_tiler(
            "inpaint", src, target, "--model", inpaint_model, "--mask", mask, "--mask-nodata", *CLI
        ),
        2,
        "--mask and --mask-nodata given",
    )
    assert_one_error(
        run_tiler("inpaint", src, target, "--model", tiny_model, "--mask", mask, *CLI),
        2,
        "is a superres model (LDMSuperResolutionPipeline); expected an inpaint model",
    )
    assert_no_output(target)


def test_full_mask_is_generated_with_a_warning(tmp_path, inpaint_model):
    src = make_raster(tmp_path / "in.tif", width=24, height=20)
    mask, _ = mask_file(tmp_path / "mask.tif", 20, 24, [(0, 20, 0, 24)])
    result = run_tiler(
        "inpaint", src, tmp_path / "out.tif", "--model", inpaint_model, "--mask", mask, *CLI
    )
    assert result.returncode == 0, result.stderr
    assert "the mask covers the whole raster" in result.stderr


def test_killed_run_resumes_to_the_same_output(tmp_path, inpaint_model):
    src = make_raster(tmp_path / "in.tif", width=128, height=128)
    squares = [(y, y + 3, x, x + 3) for y in range(2, 128, 16) for x in range(2, 128, 16)]
    mask, _ = mask_file(tmp_path / "mask.tif", 128, 128, squares)
    args = ("--model", inpaint_model, "--mask", mask, *CLI, "--steps", "6", "--workers", "1")
    assert_resumes_after_kill("inpaint", src, args, tmp_path, regions=16)


def test_seam_report_reads_an_inpainted_output(tmp_path, inpaint_model):
    import json

    src = make_raster(tmp_path / "in.tif", width=48, height=40)
    mask, _ = mask_file(tmp_path / "mask.tif", 40, 48, [(8, 30, 8, 40)])
    out = tmp_path / "out.tif"
    assert (
        run_tiler("inpaint", src, out, "--model", inpaint_model, "--mask", mask, *CLI).returncode
        == 0
    )
    result = run_tiler("qa", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["geometry"]["scale"] == 4 and report["boundaries"]["tile"] > 0
    assert report["geometry"]["decode_tile"] == 8 and report["boundaries"]["decode"] > 0


def test_decode_norm_window_drops_the_statistics_stages(tmp_path, inpaint_model):
    """The inpainting VQ shares its statistics by default (exact tiled passes); --decode-norm
    window gives each window its own, with no statistics stages."""
    from dataclasses import replace

    from tiler.tasks import stages

    src = make_raster(tmp_path / "in.tif", width=48, height=40)
    mask, _ = mask_file(tmp_path / "mask.tif", 40, 48, [(8, 30, 8, 40)])
    plans = {
        norm: plan_inpaint(
            src,
            tmp_path / "out.tif",
            model=str(inpaint_model),
            mask=MaskSpec("file", str(mask)),
            diffusion=replace(FAST, decode_norm=norm),
            **GRID,
        )
        for norm in (None, "window")
    }
    assert stages(plans[None]) == (
        "encoder_stats",
        "denoise",
        "assemble",
        "decoder_stats",
        "decode",
    )
    assert stages(plans["window"]) == ("denoise", "assemble", "decode")
    result = run_tiler(
        "inpaint",
        src,
        tmp_path / "cli.tif",
        "--model",
        inpaint_model,
        "--mask",
        mask,
        *CLI,
        "--decode-norm",
        "window",
        "--dry-run",
    )
    assert result.returncode == 0 and "shared_norm" in result.stdout and "False" in result.stdout
