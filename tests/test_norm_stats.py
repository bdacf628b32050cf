"""Shared GroupNorm statistics make the tiled encode and decode of a first stage without attention
(the inpainting VQ layout) exact: the same as one whole-canvas pass, to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_raster, read_raster

from tiler.geometry.grid import Box, Span
from tiler.ldm import norm_stats
from tiler.ldm.first_stage import tiled_pass
from tiler.raster.sources import read_reflected

SIZE, TILE, HALO = 40, 8, 16  # latent px; HALO covers the tiny decoder's reach


@pytest.fixture(scope="module")
def vq(tmp_path_factory):
    import torch
    from diffusers import VQModel
    from tiny_models import save_tiny_inpaint_model

    torch.manual_seed(0)
    folder = save_tiny_inpaint_model(tmp_path_factory.mktemp("models") / "inpaint")
    model = VQModel.from_pretrained(folder / "vqvae").eval()
    norm_stats.install(model.encoder)
    norm_stats.install(model.decoder)
    return model


def decode(vq, latents: np.ndarray, norms) -> np.ndarray:
    import torch

    with torch.no_grad(), norm_stats.using(norms):
        return vq.decode(torch.from_numpy(latents)).sample.numpy()


def encode(vq, images: np.ndarray, norms) -> np.ndarray:
    import torch

    with torch.no_grad(), norm_stats.using(norms):
        return vq.encode(torch.from_numpy(images)).latents.numpy()


def reflected(values: np.ndarray, box: Box) -> np.ndarray:
    return read_reflected(lambda rows, cols: values[:, rows, cols], box, *values.shape[1:])


def whole_and_tiled_decode(vq, norms):
    latent = np.random.default_rng(1).standard_normal((3, SIZE, SIZE)).astype(np.float32)
    outer = Box(Span(-HALO, SIZE + HALO), Span(-HALO, SIZE + HALO))  # the tiles see reflection
    whole = decode(vq, reflected(latent, outer)[None], norms)[0][
        :, HALO * 4 : -HALO * 4, HALO * 4 : -HALO * 4
    ]
    tiled = tiled_pass(
        lambda batch: decode(vq, batch, norms),
        lambda box: reflected(latent, box),
        Box(Span(0, SIZE), Span(0, SIZE)),
        TILE,
        HALO,
        4,
        3,
        batch_size=3,
    )
    return whole, tiled, latent


def measured(vq, call, batch):
    recorder = norm_stats.Recorder(
        len(norm_stats.group_norms(vq.decoder if call is decode else vq.encoder))
    )
    call(vq, batch, recorder)
    return recorder.as_array()


def test_tiled_decode_equals_whole_decode_with_shared_statistics(vq):
    sample = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    stats = measured(vq, decode, sample)
    whole, tiled, _ = whole_and_tiled_decode(vq, stats)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_per_window_statistics_are_not_exact(vq):
    """The same comparison with each window's own statistics: far from float rounding (so the test
    above can fail)."""
    whole, tiled, _ = whole_and_tiled_decode(vq, None)
    assert np.abs(tiled - whole).max() > 1e-2


def test_tiled_encode_equals_whole_encode_with_shared_statistics(vq):
    """What inpainting's conditioning does: the canvas encoded in windows of the decode tiles."""
    image = np.random.default_rng(3).uniform(-1, 1, (3, SIZE * 4, SIZE * 4)).astype(np.float32)
    stats = measured(vq, encode, image[None, :, :64, :64])
    margin = HALO * 4
    outer = Box(Span(-margin, SIZE * 4 + margin), Span(-margin, SIZE * 4 + margin))
    whole = encode(vq, reflected(image, outer)[None], stats)[0][:, HALO:-HALO, HALO:-HALO]
    windows = []

    def encode_windows(batch):
        windows.append(batch.shape)
        return encode(vq, batch, stats)

    tiled = tiled_pass(
        encode_windows,
        lambda box: reflected(image, box.scale(4)),
        Box(Span(0, SIZE), Span(0, SIZE)),
        TILE,
        HALO,
        1,
        3,
        batch_size=3,
    )
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    assert {shape[2:] for shape in windows} == {((TILE + 2 * HALO) * 4,) * 2}
    assert (
        np.abs(
            encode(vq, reflected(image, outer)[None], None)[0][:, HALO:-HALO, HALO:-HALO] - tiled
        ).max()
        > 1e-3
    )  # the statistics are what makes it exact


def test_one_window_with_its_own_statistics_is_a_plain_decode(vq):
    """Measured on one window and then used for it, the statistics reproduce diffusers' own
    GroupNorm; measured on a batch, they do not depend on the order of its windows."""
    sample = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(np.float32)
    own = measured(vq, decode, sample[:1])
    np.testing.assert_allclose(decode(vq, sample[:1], own), decode(vq, sample[:1], None), atol=2e-5)
    np.testing.assert_allclose(
        measured(vq, decode, sample),
        measured(vq, decode, sample[::-1].copy()),
        rtol=1e-5,
        atol=1e-7,
    )


def test_inpainting_output_does_not_depend_on_the_decode_tile(tmp_path):
    """With shared statistics the decode tiling is invisible: decode tiles 8 and 16 (same halo)
    give the same pixels up to one step of rounding, and almost all px identical."""
    from test_inpaint import GRID, mask_file
    from tiny_models import save_tiny_inpaint_model

    from tiler.execution.cluster import ExecutionOptions
    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.raster.mask import MaskSpec
    from tiler.tasks.inpaint import plan_inpaint

    model = save_tiny_inpaint_model(tmp_path / "model")
    src = make_raster(tmp_path / "in.tif", width=96, height=80)
    mask, _ = mask_file(tmp_path / "mask.tif", 80, 96, [(10, 70, 8, 90)])
    outputs = []
    for tile in (8, 16):
        options = DiffusionOptions(steps=2, decode_tile=tile, decode_halo=HALO, device="cpu")
        plan = plan_inpaint(
            src,
            tmp_path / f"out{tile}.tif",
            model=str(model),
            mask=MaskSpec("file", str(mask)),
            diffusion=options,
            **GRID,
        )
        assert plan.diffusion.shared_norm
        run_plan(
            plan,
            runtime=RuntimeOptions(device="cpu"),
            execution=ExecutionOptions(cluster="threads", workers=1),
        )
        outputs.append(read_raster(tmp_path / f"out{tile}.tif")[0].astype(int))
    difference = np.abs(outputs[0] - outputs[1])
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99
