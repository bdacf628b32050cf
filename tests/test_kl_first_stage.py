"""A KL first stage (AutoencoderKL, ``first-stage: vae`` in tiler's model card), the first stage of
Stable Diffusion-style LDMs (issue 14's groundwork): loaded by the folder's format, its latents
scaled by its scaling factor for the UNet, encoded and decoded in the engine's windows with the
run's shared GroupNorm statistics; an inpainting run keeps every unmasked px and does not depend
on batch size or workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_raster, read_raster
from tiny_models import save_tiny_inpaint_model

from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import run_plan
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.raster.mask import MaskSpec
from tiler.tasks.inpaint import plan_inpaint

GRID = dict(tile=8, overlap=2, region=8, halo=2)
FAST = DiffusionOptions(steps=3, decode_tile=8, decode_halo=2, device="cpu")


@pytest.fixture(scope="module")
def kl_model(tmp_path_factory) -> Path:
    return save_tiny_inpaint_model(tmp_path_factory.mktemp("models") / "kl", first_stage="vae")


def test_the_folder_format_loads_a_kl_first_stage_and_scales_its_latents(kl_model):
    import torch
    from diffusers import AutoencoderKL

    from tiler.ldm.loading import load_model
    from tiler.ldm.runner import ModelRunner

    model = load_model(str(kl_model), device="cpu")
    assert model.first_stage_kind == "vae" and isinstance(model.vqvae, AutoencoderKL)
    runner = ModelRunner(model, "ddim", compile=False)
    assert runner.kl_scaling == 0.5
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    latents = runner.encode_pixels(pixels)
    reference = AutoencoderKL.from_pretrained(kl_model / "vae").eval()
    with torch.no_grad():
        mode = reference.encode(torch.from_numpy(pixels)).latent_dist.mode().numpy()
        decoded = reference.decode(torch.from_numpy(latents) / 0.5).sample.numpy()
    np.testing.assert_allclose(latents, mode * 0.5, atol=1e-5)
    np.testing.assert_allclose(runner.decode_latents(latents), decoded, atol=1e-4)


def inpaint(src, dst, model, mask, batch_size=None, workers=1):
    plan = plan_inpaint(src, dst, model=str(model), mask=mask, diffusion=FAST, **GRID)
    run_plan(
        plan,
        runtime=RuntimeOptions(device="cpu", batch_size=batch_size),
        execution=ExecutionOptions(cluster="threads", workers=workers),
    )
    return read_raster(dst)[0], plan


def test_inpainting_with_a_kl_first_stage_keeps_unmasked_px_and_any_batching(tmp_path, kl_model):
    src = make_raster(tmp_path / "in.tif", width=40, height=36)
    area = np.zeros((1, 36, 40), dtype="uint8")
    area[0, 6:30, 10:20] = 1
    mask = make_raster(tmp_path / "mask.tif", data=area)
    spec = MaskSpec("file", str(mask))
    one, plan = inpaint(src, tmp_path / "one.tif", kl_model, spec, batch_size=1)
    many, _ = inpaint(src, tmp_path / "many.tif", kl_model, spec, batch_size=5, workers=2)
    assert plan.factor == 4 and plan.diffusion.shared_norm
    data, filled = read_raster(src)[0], area[0] > 0
    np.testing.assert_array_equal(one[:, ~filled], data[:, ~filled])
    assert (one[:, filled] != data[:, filled]).mean() > 0.9
    np.testing.assert_array_equal(one, many)
