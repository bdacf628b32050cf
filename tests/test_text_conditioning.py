"""Text-conditioned LDMs on the engine (issue 14): the Stable Diffusion x4 upscaler
(StableDiffusionUpscalePipeline: cross-attention to CLIP text, classifier-free guidance,
v-prediction, the noise level as class labels, a KL first stage) and Stable Diffusion inpainting
(StableDiffusionInpaintPipeline: a 9-channel UNet, KL f = 8), with tiny models of the real classes
saved by diffusers itself. On one tile tiler's output equals diffusers' own pipeline run with
tiler's noise; tiled runs do not depend on batch size, workers or restarts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_part_way, make_raster, read_raster, run_tiler, shown_lines
from test_errors import assert_no_output, assert_one_error
from tiny_models import save_tiny_sd_inpainter, save_tiny_sd_upscaler, save_tiny_sr_model

from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import run_plan
from tiler.geometry.grid import Box, Span
from tiler.ldm.noise import INITIAL_STEP, LOW_RES_STEP, keyed_noise
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.raster.mask import MaskSpec
from tiler.tasks import plan_upscale
from tiler.tasks.inpaint import plan_inpaint

STEPS = 3
# one tile, one window, no halo: the arithmetic of diffusers' whole-image pipeline
ONE_TILE = dict(tile=16, overlap=0, region=16, halo=0)
WHOLE = DiffusionOptions(
    steps=STEPS, decode_tile=16, decode_halo=0, decode_norm="window", device="cpu"
)
GRID = dict(tile=16, overlap=4, region=24, halo=4)
FAST = DiffusionOptions(steps=STEPS, decode_tile=16, decode_halo=4, device="cpu")
PROMPT = "the river"


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory) -> Path:
    return save_tiny_sd_upscaler(tmp_path_factory.mktemp("models") / "x4")


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory) -> Path:
    return save_tiny_sd_inpainter(tmp_path_factory.mktemp("models") / "sd-inpaint")


def upscale(src, dst, model, options=FAST, grid=GRID, batch_size=None, workers=1, **keys):
    options = DiffusionOptions(**(vars(options) | keys))
    plan = plan_upscale(src, dst, model=str(model), **grid, diffusion=options)
    run_plan(
        plan,
        runtime=RuntimeOptions(device="cpu", batch_size=batch_size),
        execution=ExecutionOptions(cluster="threads", workers=workers),
        progress=False,
    )
    return read_raster(dst)[0], plan


def noise(key: int, channels: int, height: int, width: int):
    return keyed_noise(0, key, channels, Box(Span(0, height), Span(0, width)))[None]


# --- equal to diffusers' pipelines on one tile ----------------------------------------------------
def test_the_x4_upscaler_on_one_tile_equals_diffusers_pipeline(tmp_path, upscaler, monkeypatch):
    import torch
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_upscale as module

    src = make_raster(tmp_path / "in.tif", width=16, height=16)
    out, plan = upscale(
        src, tmp_path / "out.tif", upscaler, WHOLE, ONE_TILE, prompt=PROMPT, back_project=False
    )
    assert plan.diffusion.text.guidance_scale == 9.0 and plan.diffusion.noise_level == 20
    # diffusers with tiler's noise: the initial latent, and the low-res image's (its own key)
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: noise(LOW_RES_STEP, 3, 16, 16))
    pipeline = module.StableDiffusionUpscalePipeline.from_pretrained(str(upscaler))
    image = read_raster(src)[0].transpose(1, 2, 0)[None].astype(np.float32) / 255
    with torch.no_grad():
        reference = pipeline(
            prompt=PROMPT,
            image=image,
            num_inference_steps=STEPS,
            latents=noise(INITIAL_STEP, 4, 16, 16),
            output_type="np",
        ).images[0]
    expected = np.round(reference * 255).transpose(2, 0, 1)
    assert out.shape == expected.shape == (3, 64, 64)
    assert np.abs(out.astype(np.int16) - expected).max() <= 1


def test_sd_inpainting_on_one_tile_equals_diffusers_pipeline(tmp_path, inpainter):
    """f = 8: 128 px are one tile of 16 latent px. Unmasked px are the input's bit for bit; the
    masked ones equal diffusers' output (given the masked image's latent as tiler encodes it, the
    KL posterior's mode)."""
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
        StableDiffusionInpaintPipeline,
    )

    src = make_raster(tmp_path / "in.tif", width=128, height=128)
    area = np.zeros((1, 128, 128), dtype="uint8")
    area[0, 40:90, 30:100] = 1
    mask = make_raster(tmp_path / "mask.tif", data=area)
    options = DiffusionOptions(**(vars(WHOLE) | dict(prompt=PROMPT)))
    plan = plan_inpaint(
        src, tmp_path / "out.tif", model=str(inpainter), mask=MaskSpec("file", str(mask)),
        **ONE_TILE, diffusion=options,
    )  # fmt: skip
    run_plan(plan, runtime=RuntimeOptions(device="cpu"), progress=False)
    out, data, filled = read_raster(tmp_path / "out.tif")[0], read_raster(src)[0], area[0] > 0
    assert plan.diffusion.text.guidance_scale == 7.5 and plan.factor == 8
    np.testing.assert_array_equal(out[:, ~filled], data[:, ~filled])

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(str(inpainter))
    image = torch.from_numpy(data[None].astype(np.float32) / 127.5 - 1)
    masked = image * torch.from_numpy(area[None] == 0)
    with torch.no_grad():
        masked_latent = pipeline.vae.encode(masked).latent_dist.mode() * 0.18215
        reference = pipeline(
            prompt=PROMPT,
            image=data.transpose(1, 2, 0)[None].astype(np.float32) / 255,
            mask_image=area.transpose(1, 2, 0)[None].astype(np.float32),
            masked_image_latents=masked_latent,
            num_inference_steps=STEPS,
            latents=noise(INITIAL_STEP, 4, 16, 16),
            height=128,
            width=128,
            output_type="np",
        ).images[0]
    expected = np.round(reference * 255).transpose(2, 0, 1)
    assert np.abs(out[:, filled].astype(np.int16) - expected[:, filled]).max() <= 1


# --- what the prompt and the guidance do ---------------------------------------------------------
def count_unet_rows(monkeypatch) -> list[int]:
    """Rows of every UNet2DConditionModel call, recorded."""
    from diffusers import UNet2DConditionModel

    rows: list[int] = []
    forward = UNet2DConditionModel.forward

    def counted(self, sample, *args, **kwargs):
        rows.append(len(sample))
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counted)
    return rows


def test_the_prompt_changes_the_output_and_guidance_1_skips_the_unconditional_pass(
    tmp_path, upscaler, monkeypatch
):
    src = make_raster(tmp_path / "in.tif", width=36, height=40)
    rows = count_unet_rows(monkeypatch)
    river, guided = upscale(src, tmp_path / "river.tif", upscaler, prompt=PROMPT)
    guided_rows, rows[:] = sum(rows), []
    forest, _ = upscale(src, tmp_path / "forest.tif", upscaler, prompt="a forest")
    rows[:] = []
    plain, unguided = upscale(
        src, tmp_path / "plain.tif", upscaler, prompt=PROMPT, guidance_scale=1
    )
    assert (river != forest).mean() > 0.2 and (river != plain).mean() > 0.2
    computed = unguided.tile_grid().computed_tile_count() * STEPS
    assert sum(rows) == computed and guided_rows == 2 * computed
    assert unguided.summary()["unet_evaluations"] == computed
    assert guided.summary()["unet_evaluations"] == 2 * computed
    again, _ = upscale(src, tmp_path / "again.tif", upscaler, prompt=PROMPT)
    np.testing.assert_array_equal(river, again)


def test_batch_size_workers_and_the_noise_level_key(tmp_path, upscaler):
    src = make_raster(tmp_path / "in.tif", width=36, height=40)
    one, plan = upscale(src, tmp_path / "one.tif", upscaler, batch_size=1, prompt=PROMPT)
    many, _ = upscale(src, tmp_path / "many.tif", upscaler, batch_size=5, workers=2, prompt=PROMPT)
    np.testing.assert_array_equal(one, many)
    assert json.loads(plan.model_dump_json())["diffusion"]["noise_level"] == 20
    louder, other = upscale(src, tmp_path / "loud.tif", upscaler, noise_level=200, prompt=PROMPT)
    assert other.fingerprint != plan.fingerprint and (louder != one).mean() > 0.2


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(error, 1e-12)))


def test_a_tiled_run_against_one_tile(tmp_path, upscaler):
    """Tiles of 16 with regions of 24 against one tile over the whole 40 x 36 px: the fused
    sampler keeps them close and the tile boundaries invisible (figures printed, as for LDM-SR)."""
    from tiler.quality.seams import seam_report

    src = make_raster(tmp_path / "in.tif", width=36, height=40)
    tiled, plan = upscale(src, tmp_path / "tiled.tif", upscaler, prompt=PROMPT)
    whole, _ = upscale(
        src,
        tmp_path / "whole.tif",
        upscaler,
        grid=dict(tile=40, overlap=0, region=40, halo=0),
        prompt=PROMPT,
    )
    report = seam_report(tmp_path / "tiled.tif")
    print(f"PSNR tiled vs one tile {psnr(tiled, whole):.1f} dB, seam index {report.index}")
    assert plan.tile_grid().tile_count > 1
    assert psnr(tiled, whole) > 20
    assert 0.5 < report.index["tile"] < 1.5


def test_kill_and_resume_is_bit_identical(tmp_path, upscaler):
    src = make_raster(tmp_path / "in.tif", width=60, height=56)
    args = [
        "upscale", src, tmp_path / "out.tif", "--model", upscaler, "--prompt", PROMPT,
        "--steps", STEPS, "--tile", 16, "--overlap", 4, "--region", 16, "--halo", 4,
        "--decode-tile", 16, "--decode-halo", 4, "--device", "cpu", "--batch-size", 1,
    ]  # fmt: skip
    kill_part_way(args, tmp_path / "out.tif.tiler", tmp_path / "log", stage="denoise", after=2)
    resumed = run_tiler(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in shown_lines(resumed.stderr)[-1]
    fresh = run_tiler(*[str(a).replace("out.tif", "fresh.tif") for a in args])
    assert fresh.returncode == 0, fresh.stderr
    np.testing.assert_array_equal(
        read_raster(tmp_path / "out.tif")[0], read_raster(tmp_path / "fresh.tif")[0]
    )


# --- refused, with one line ----------------------------------------------------------------------
CLI = ("--steps", STEPS, "--tile", 16, "--overlap", 4, "--device", "cpu")


@pytest.fixture(scope="module")
def broken(tmp_path_factory, upscaler) -> dict[str, Path]:
    """The x4 upscaler without its tokenizer, and without its text encoder."""
    root = tmp_path_factory.mktemp("broken")
    folders = {}
    for part in ("tokenizer", "text_encoder"):
        folders[part] = root / f"no-{part}"
        shutil.copytree(upscaler, folders[part])
        shutil.rmtree(folders[part] / part)
    return folders


def test_bad_text_options_are_one_line_errors(tmp_path, upscaler, inpainter, broken):
    src = make_raster(tmp_path / "in.tif", width=16, height=16)
    target = tmp_path / "out.tif"
    sr_model = save_tiny_sr_model(tmp_path / "sr")
    cases = [
        (("--model", broken["tokenizer"]), 1, "tokenizer: missing"),
        (("--model", broken["text_encoder"]), 1, "text_encoder: missing"),
        (
            ("--model", sr_model, "--prompt", "a river"),
            2,
            "--prompt: 'a river': model",
            "has no text conditioning",
        ),
        (("--model", "bicubic", "--prompt", "a river"), 2, "classical model bicubic takes none"),
        (
            ("--model", upscaler, "--noise-level", 351),
            2,
            "--noise-level: 351: expected a whole number from 0 to the model's",
            "max_noise_level, 350",
        ),
        (("--model", upscaler, "--guidance-scale", 0.5), 2, "--guidance-scale: 0.5: expected"),
    ]
    for args, code, *fragments in cases:
        assert_one_error(run_tiler("upscale", src, target, *args, *CLI), code, *fragments)
        assert_no_output(target)
    from tiler.errors import BadParameter

    area = make_raster(tmp_path / "mask.tif", data=np.ones((1, 16, 16), dtype="uint8"))
    with pytest.raises(BadParameter, match="5: model .* takes no noise level"):
        plan_inpaint(
            src, target, model=str(inpainter), mask=MaskSpec("file", str(area)), tile=16,
            overlap=4, diffusion=DiffusionOptions(noise_level=5),
        )  # fmt: skip


def test_a_long_prompt_warns_naming_the_dropped_words(tmp_path, upscaler):
    src = make_raster(tmp_path / "in.tif", width=16, height=16)
    result = run_tiler(
        "plan", src, "--model", upscaler, "--prompt", "the river bends past the old mill wheel"
    )
    assert result.returncode == 0, result.stderr
    warning = [line for line in shown_lines(result.stderr) if "left out" in line]
    assert len(warning) == 1 and "wheel" in warning[0] and "river" not in warning[0]
    assert "prompt" in result.stdout and "guidance_scale" in result.stdout


def test_a_workflow_prompt_takes_the_file_stem(tmp_path, upscaler):
    import yaml

    inputs = tmp_path / "in"
    inputs.mkdir()
    make_raster(inputs / "harbour.tif", width=16, height=16)
    workflow = {
        "inputs": [str(inputs / "*.tif")],
        "steps": [
            {
                "name": "x4",
                "task": "upscale",
                "model": str(upscaler),
                "prompt": "a {stem}",
                "guidance-scale": 4,
                "output": str(tmp_path / "out" / "{stem}_x4.tif"),
                **{key: value for key, value in dict(steps=STEPS, tile=16, overlap=4).items()},
            }
        ],
    }
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    result = run_tiler("run", path, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert '"prompt": "a harbour"' in result.stdout
    assert '"guidance_scale": 4.0' in result.stdout


def test_a_dask_cluster_gives_the_threads_output(tmp_path, upscaler):
    """The prompt is encoded once (a one-unit stage) and its embeddings reach the worker processes
    through the workdir."""
    src = make_raster(tmp_path / "in.tif", width=36, height=40)
    expected, _ = upscale(src, tmp_path / "threads.tif", upscaler, prompt=PROMPT)
    result = run_tiler(
        "upscale", src, tmp_path / "dask.tif", "--model", upscaler, "--prompt", PROMPT,
        "--steps", STEPS, *(f"--{key}={value}" for key, value in GRID.items()),
        "--decode-tile", 16, "--decode-halo", 4, "--device", "cpu",
        "--cluster", "local", "--workers", 2, "--keep-workdir",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "encode_text 1/1" in shown_lines(result.stderr)[-1]
    assert (tmp_path / "dask.tif.tiler" / "text" / "embeddings.npy").is_file()
    np.testing.assert_array_equal(read_raster(tmp_path / "dask.tif")[0], expected)


def test_the_hub_id_runs_from_the_hugging_face_cache_offline(tmp_path, upscaler):
    """``--model stabilityai/stable-diffusion-x4-upscaler`` with the model in the cache (tokenizer
    and text encoder included) and the hub switched off."""
    import os
    import subprocess
    import sys

    from test_models import fake_hub_cache

    repo_id = "stabilityai/stable-diffusion-x4-upscaler"
    fake_hub_cache(tmp_path / "hf" / "hub", repo_id, upscaler)
    src = make_raster(tmp_path / "in.tif", width=16, height=16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tiler", "upscale", src, tmp_path / "out.tif", "--model", repo_id,
         "--prompt", PROMPT, *map(str, CLI)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_raster(tmp_path / "out.tif")[0].shape == (3, 64, 64)
