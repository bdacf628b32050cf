"""tiler train: a tiny configuration trains in seconds, resumes after SIGKILL to the same weights,
never reads held-out areas, refuses bad inputs in one line, and writes folders that tiler upscale
and tiler inpaint load through their normal path."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_raster, read_raster, run_tiler, shown_lines
from safetensors.numpy import load_file

from tiler.errors import BadParameter, InputError
from tiler.geometry.grid import Box, Span
from tiler.train.data import WindowSampler

TINY = (
    "--size",
    "tiny",
    "--window",
    "8",
    "--batch-size",
    "2",
    "--first-stage-window",
    "16",
    "--first-stage-batch-size",
    "2",
    "--device",
    "cpu",
)


@pytest.fixture
def scene(tmp_path):
    return make_raster(tmp_path / "scene.tif", width=96, height=80, count=3, dtype="uint16")


def train(task, sources, out, *extra):
    return run_tiler("train", task, *sources, "-o", out, *TINY, *extra)


def test_superres_folder_loads_through_tiler_upscale(scene, tmp_path):
    model = tmp_path / "sr-model"
    result = train("superres", [scene], model, "--steps", "3", "--notice", "CC0 test data", "-q")
    assert result.returncode == 0, result.stderr
    assert '"LDMSuperResolutionPipeline"' in (model / "model_index.json").read_text()
    card = (model / "README.md").read_text()
    assert "CC0 test data" in card and "tiler train superres" in card and "scene.tif" in card
    assert not list(model.rglob("*.bin")) and list(model.rglob("*.safetensors"))
    small = make_raster(
        tmp_path / "small.tif", width=20, height=16, count=3, dtype="uint16", seed=3
    )
    out = tmp_path / "up.tif"
    upscaled = run_tiler("upscale", small, out, "--model", model, "--steps", "2", "-q")
    assert upscaled.returncode == 0, upscaled.stderr
    assert read_raster(out)[0].shape == (3, 64, 80)


def test_inpaint_folder_loads_through_tiler_inpaint(scene, tmp_path):
    model = tmp_path / "inpaint-model"
    result = train("inpaint", [scene], model, "--steps", "3", "-q")
    assert result.returncode == 0, result.stderr
    assert "task: inpaint" in (model / "tiler.yaml").read_text()
    small = make_raster(
        tmp_path / "small.tif", width=24, height=24, count=3, dtype="uint16", seed=3
    )
    fill = np.zeros((1, 24, 24), np.uint8)
    fill[0, 8:16, 4:12] = 1
    mask = make_raster(tmp_path / "mask.tif", data=fill)
    out = tmp_path / "filled.tif"
    filled = run_tiler(
        "inpaint", small, out, "--model", model, "--mask", mask, "--steps", "2", "-q"
    )
    assert filled.returncode == 0, filled.stderr
    before, after = read_raster(small)[0], read_raster(out)[0]
    assert np.array_equal(before[:, fill[0] == 0], after[:, fill[0] == 0])


def test_resumes_after_sigkill_to_the_uninterrupted_weights(scene, tmp_path):
    args = [
        "superres",
        scene,
        *TINY,
        "--steps",
        "30",
        "--first-stage-steps",
        "10",
        "--checkpoint-minutes",
        "0.001",
        "-q",
    ]
    reference = run_tiler("train", *args, "-o", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "resumed"
    process = subprocess.Popen(
        [sys.executable, "-m", "tiler", "train", *map(str, args), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = Path(f"{out}.train") / "unet.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before the kill"
    assert not out.exists()  # no half-written model folder under the final name
    resumed = run_tiler("train", *args, "-o", out, "-v")
    assert resumed.returncode == 0, resumed.stderr
    assert "unet: resumed at step" in resumed.stderr
    for part in ("unet", "vqvae"):
        name = f"{part}/diffusion_pytorch_model.safetensors"
        expected, got = load_file(tmp_path / "reference" / name), load_file(out / name)
        assert all(np.array_equal(expected[key], got[key]) for key in expected), part


def test_held_out_areas_are_never_read(scene):
    # scene: 96 x 80 px, transform origin (500000, 4600000), 10 m px; hold out px cols 20..60, rows
    # 10..50
    hold_out = ((500200.0, 4599500.0, 500600.0, 4599900.0),)
    sampler = WindowSampler.open([scene], None, None, hold_out, (16,), seed=1)
    held = Box(Span(10, 50), Span(20, 60))
    for step in range(40):
        sampler.batch(step, 0, 4, 16)
    assert len(sampler.read_boxes) >= 160
    assert all(box.intersection(held) is None for _, box in sampler.read_boxes)
    with pytest.raises(AssertionError):
        sampler.rasters[0].read(Box(Span(40, 56), Span(50, 66)))


def test_batches_are_a_function_of_seed_and_step(scene):
    first = WindowSampler.open([scene], None, None, (), (16,), seed=4)
    second = WindowSampler.open([scene], None, None, (), (16,), seed=4)
    assert np.array_equal(first.batch(7, 1, 3, 16), second.batch(7, 1, 3, 16))
    assert not np.array_equal(first.batch(7, 1, 3, 16), first.batch(8, 1, 3, 16))


def test_nodata_windows_are_skipped(tmp_path):
    data = np.full((3, 40, 40), 500, np.uint16)
    data[:, :, 20:] = 0  # the right half is nodata
    path = make_raster(tmp_path / "half.tif", data=data, nodata=0)
    sampler = WindowSampler.open([path], None, (0.0, 1000.0), (), (16,), seed=0)
    batch = sampler.batch(0, 0, 8, 16)
    assert np.allclose(batch, 0.0)  # 500 of 0..1000 is 0 in [-1, 1]: only valid windows came back


def test_bad_training_inputs_name_the_problem(scene, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([empty], None, (), InputError, "no rasters to train on"),
        ([tmp_path / "missing.tif"], None, (), InputError, "no such file or folder"),
        (
            [make_raster(tmp_path / "two.tif", count=2, width=64, height=64)],
            None,
            (),
            BadParameter,
            "invalid value for bands",
        ),
        (
            [make_raster(tmp_path / "tiny.tif", width=12, height=12)],
            None,
            (),
            InputError,
            "smaller than the training window",
        ),
        ([scene], "4", (), BadParameter, "out of range"),
        (
            [scene],
            None,
            ((499000.0, 4590000.0, 510000.0, 4610000.0),),
            InputError,
            "lies outside the held-out areas",
        ),
    ]
    for sources, bands, hold_out, error, text in cases:
        with pytest.raises(error, match=re.escape(text)):
            WindowSampler.open(sources, bands, None, hold_out, (16,), seed=0)


def test_bad_inputs_are_one_line_errors_before_any_training(scene, tmp_path):
    wrong_bands = make_raster(tmp_path / "two.tif", count=2, width=64, height=64)
    for args, code, text in [
        ((wrong_bands, "--steps", "2"), 2, "-b/--bidx"),
        ((scene, "--steps", "2", "--hold-out", "1,2,3"), 2, "--hold-out"),
        ((scene,), 2, "--steps/--minutes"),
    ]:
        result = run_tiler("train", "superres", *args, "-o", tmp_path / "m", *TINY)
        lines = shown_lines(result.stderr)
        assert result.returncode == code and len(lines) == 1 and text in lines[0], result.stderr
    assert not (tmp_path / "m").exists()


def test_an_existing_output_is_kept_without_overwrite(scene, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = train("superres", [scene], out, "--steps", "2", "--overwrite")
    assert refused.returncode == 1 and "not a model folder" in refused.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_the_bundled_models_training_never_reads_the_demo_sample():
    """training/prepare_data.py holds out the demo sample's footprint (and a second area)."""
    import rasterio

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
    from prepare_data import HOLD_OUT

    with rasterio.open(
        Path(__file__).resolve().parent.parent / "samples" / "sentinel2_rgb.tif"
    ) as src:
        left, bottom, right, top = src.bounds
    held = HOLD_OUT["demo sample"]
    assert held[0] <= left and held[1] <= bottom and held[2] >= right and held[3] >= top
    assert len(HOLD_OUT) >= 2


def test_a_given_first_stage_is_reused_frozen(scene, tmp_path):
    first = tmp_path / "first"
    assert train("superres", [scene], first, "--steps", "2", "-q").returncode == 0
    second = tmp_path / "second"
    result = train("inpaint", [scene], second, "--steps", "2", "--first-stage", first, "-q")
    assert result.returncode == 0, result.stderr
    name = "vqvae/diffusion_pytorch_model.safetensors"
    given, reused = load_file(first / name), load_file(second / name)
    assert all(np.array_equal(given[key], reused[key]) for key in given)
    assert not (Path(f"{second}.train") / "first_stage.pt").exists()
