"""Back-projection (``tiler upscale --back-project``): the maths alone (tiler/back_projection.py),
then LDM super-resolution with a tiny random model, whose raw output is far from the input's block
means: with the option every output block's mean is the input px under it, tiled runs equal whole
ones, nodata stays nodata, and the plan records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_raster, read_raster, run_tiler

from tiler.execution.run import run_plan
from tiler.geometry import back_projection as bp
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.tasks import plan_upscale

F = 4


def random_case(height=40, width=36, bands=2, seed=0, nodata_fraction=0.0):
    """An image far from its input (errors of several units), the input and its validity."""
    rng = np.random.default_rng(seed)
    lowres = rng.uniform(0, 1, (bands, height, width))
    image = np.repeat(np.repeat(lowres, F, 1), F, 2) + rng.normal(
        0, 3, (bands, height * F, width * F)
    )
    valid = rng.random((bands, height, width)) >= nodata_fraction
    return image, lowres, valid


# --- the maths
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [2, 4, 8])
def test_area_of_upsample_is_the_documented_low_res_convolution(f):
    rng = np.random.default_rng(f)
    lowres = rng.normal(size=(2, 9, 11))
    np.testing.assert_allclose(
        bp.block_mean(bp.upsample(lowres, f), f),
        bp.convolve(lowres, bp.AREA_OF_UPSAMPLE),
        atol=1e-12,
    )


def test_upsample_is_smooth_not_blocky():
    """A ramp on the low-res grid stays a ramp inside the array: no steps at block edges."""
    ramp = np.arange(8, dtype=np.float64)[None, None, :].repeat(3, axis=1)
    row = bp.upsample(ramp, F)[0, F + 1, F:-F]  # away from the zero beyond the array
    np.testing.assert_allclose(np.diff(row), 1 / F)


@pytest.mark.parametrize("nodata_fraction", [0.0, 0.2])
def test_block_means_converge_to_the_input(nodata_fraction):
    image, lowres, valid = random_case(nodata_fraction=nodata_fraction)
    before = np.abs(lowres - bp.block_mean(image, F))[valid].max()
    errors = []
    for iterations in range(1, bp.ITERATIONS + 1):
        corrected = bp.back_project(image, lowres, valid, F, iterations=iterations)
        errors.append(np.abs(lowres - bp.block_mean(corrected, F))[valid].max())
    assert before > 1
    # each iteration cuts the largest remaining error at least 3x (bound for no nodata: 8x)
    assert all(later < earlier / 3 for earlier, later in zip([before] + errors, errors))
    assert errors[-1] < 1e-5 * before  # measured: 5e-7


def test_nodata_px_have_no_residual_and_pull_on_nothing():
    """Invalid px's input values never matter: any value there gives the same result."""
    image, lowres, valid = random_case(nodata_fraction=0.3, seed=1)
    other = np.where(valid, lowres, 1e6)
    np.testing.assert_array_equal(
        bp.back_project(image, lowres, valid, F), bp.back_project(image, other, valid, F)
    )


def test_changing_an_input_px_farther_than_the_halo_changes_nothing():
    image, lowres, valid = random_case(height=48, width=48, bands=1, seed=2)
    y, x = 24, 24  # the low-res px whose output block is watched
    before = bp.back_project(image, lowres, valid, F)
    block = (0, slice(y * F, (y + 1) * F), slice(x * F, (x + 1) * F))
    for dy, dx in [(bp.HALO + 1, 0), (0, -bp.HALO - 1), (bp.HALO + 1, bp.HALO + 1)]:
        for changed_input, changed_image in [(lowres.copy(), image), (lowres, image.copy())]:
            changed_input[0, y + dy, x + dx] += 5
            changed_image[0, (y + dy) * F, (x + dx) * F] += 5
            after = bp.back_project(changed_image, changed_input, valid, F)
            np.testing.assert_array_equal(after[block], before[block])
    near = lowres.copy()
    near[0, y + bp.HALO, x] += 5  # within the halo: the watched block moves (the reach is real)
    assert not np.array_equal(bp.back_project(image, near, valid, F)[block], before[block])


def test_a_core_grown_by_the_halo_gets_the_whole_arrays_correction():
    image, lowres, valid = random_case(height=48, width=44, seed=3)
    residual = np.where(valid, lowres - bp.block_mean(image, F), 0)
    whole = bp.correction(residual, valid, F)
    y0, x0, side = 20, 18, 6
    box = (slice(None), *(slice(start - bp.HALO, start + side + bp.HALO) for start in (y0, x0)))
    core = bp.correction(residual[box], valid[box], F, margin=bp.HALO)
    np.testing.assert_array_equal(
        core, whole[:, y0 * F : (y0 + side) * F, x0 * F : (x0 + side) * F]
    )


# --- LDM super-resolution
# ---------------------------------------------------------------------------
# Several regions, tiles and decode tiles on a small raster; the back-projection halo (12 low-res
# px) reaches past its edges, so reflection is exercised on every side.
GRID = dict(tile=16, overlap=4, region=24, halo=4)
FAST = dict(steps=2, decode_tile=16, decode_halo=4, device="cpu")


def upscale(src, dst, model, back_project=True, workers=1, **grid):
    plan = plan_upscale(
        src,
        dst,
        model=str(model),
        **(GRID | grid),
        diffusion=DiffusionOptions(back_project=back_project, **FAST),
    )
    run_plan(plan, workers=workers, runtime=RuntimeOptions(device="cpu"))
    return read_raster(dst)[0], plan


def block_errors(output, lowres, valid):
    """|block mean - input| at the valid low-res px, in raster units."""
    return np.abs(bp.block_mean(output.astype(np.float64), F) - lowres)[valid]


def test_output_block_means_equal_the_input_only_with_the_option(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=28, height=20, dtype="float32")
    lowres = read_raster(src)[0].astype(np.float64)
    valid = np.ones(lowres.shape, dtype=bool)
    projected, plan = upscale(src, tmp_path / "on.tif", tiny_model)
    raw, _ = upscale(src, tmp_path / "off.tif", tiny_model, back_project=False)
    low, high = plan.diffusion.value_range
    on, off = (block_errors(out, lowres, valid).max() / (high - low) for out in (projected, raw))
    print(
        f"largest block-mean error / value range: {on:.1e} with back-projection, {off:.2f} without"
    )
    assert off > 0.05  # random weights: the raw output is far from the input
    assert on < 1e-5
    # the correction is smooth: its steps across block edges are like those inside blocks
    steps = np.abs(np.diff(projected.astype(np.float64) - raw, axis=2))
    across = np.zeros(steps.shape[-1], dtype=bool)
    across[F - 1 :: F] = True
    assert steps[..., across].mean() < 2 * steps[..., ~across].mean()  # measured: 1.25


def test_tiled_output_equals_the_whole(tmp_path, tiny_model):
    """Output chunks of 8 low-res px (the halo of 12 spans more than a neighbour) against one chunk
    over everything: the same uint16 px."""
    src = make_raster(tmp_path / "in.tif", width=28, height=20, dtype="uint16")
    tiled, _ = upscale(src, tmp_path / "tiled.tif", tiny_model, chunk=8, workers=2)
    whole, plan = upscale(src, tmp_path / "whole.tif", tiny_model, chunk=64)
    assert plan.tile_grid().chunk_shape(64) == (1, 1)
    np.testing.assert_array_equal(tiled, whole)


def test_nodata_stays_nodata_and_valid_blocks_still_match(tmp_path, tiny_model):
    pixels = read_raster(make_raster(tmp_path / "data.tif", width=24, height=24, dtype="float32"))[
        0
    ]
    pixels[:, 6:10, 3:9] = -9999  # a hole inside
    pixels[:, 18:, 20:] = -9999  # a corner at the raster's edges
    src = make_raster(tmp_path / "in.tif", data=pixels, nodata=-9999)
    out, plan = upscale(src, tmp_path / "out.tif", tiny_model, chunk=8, workers=2)
    missing = pixels == -9999
    np.testing.assert_array_equal(out == -9999, np.repeat(np.repeat(missing, F, 1), F, 2))
    low, high = plan.diffusion.value_range
    assert block_errors(out, pixels.astype(np.float64), ~missing).max() < 1e-5 * (high - low)


def test_the_option_is_in_the_plan_and_its_fingerprint(tmp_path, tiny_model):
    from tiler.errors import WorkdirError
    from tiler.tasks import array_specs, stages
    from tiler.workdir.store import Workdir

    src = make_raster(tmp_path / "in.tif", width=24, height=24)
    result = run_tiler(
        "plan", src, "--model", tiny_model, "--json", "--device", "cpu", "--back-project"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["back_project"] is True
    plans = {
        flag: plan_upscale(
            src,
            tmp_path / "out.tif",
            model=str(tiny_model),
            **GRID,
            diffusion=DiffusionOptions(back_project=flag, **FAST),
        )
        for flag in (None, False, True)
    }
    assert plans[None] == plans[bp.ENABLED_BY_DEFAULT]  # one constant decides the default
    assert plans[True].fingerprint != plans[False].fingerprint
    assert stages(plans[False]) == ("denoise", "assemble", "decoder_stats", "decode")
    assert stages(plans[True]) == ("denoise", "assemble", "decoder_stats", "block_means", "decode")
    Workdir.open_or_create(tmp_path / "work", plans[False], array_specs(plans[False]))
    with pytest.raises(WorkdirError, match="different plan"):
        Workdir.open_or_create(tmp_path / "work", plans[True], array_specs(plans[True]))


def test_workflow_upscale_steps_take_the_key_and_inpaint_steps_do_not(tmp_path, tiny_model):
    from tiler.workflow import WorkflowError, load_workflow
    from tiler.workflow.runner import plan_step

    src = make_raster(tmp_path / "in.tif", width=24, height=24)
    step = (
        f"  - {{name: up, task: upscale, model: {tiny_model}, output: out.tif, device: cpu, "
        "back-project: true}\n"
    )
    workflow = tmp_path / "up.yaml"
    workflow.write_text(f"inputs: [in.tif]\nsteps:\n{step}")
    up = load_workflow(workflow)[0].steps[0]
    assert plan_step(up, src, tmp_path / "out.tif").diffusion.back_project
    workflow.write_text(
        "inputs: [in.tif]\nsteps:\n  - {name: fill, task: inpaint, model: m, "
        "mask-nodata: true, output: o.tif, back-project: true}\n"
    )
    with pytest.raises(WorkflowError, match="back-project: unknown key"):
        load_workflow(workflow)
