"""Keyed noise: a pure function of (seed, step, channel, y, x)."""

import numpy as np
import pytest
import torch

from tiler.geometry.grid import Box, Span
from tiler.ldm.noise import INITIAL_STEP, keyed_noise


def box(y0, y1, x0, x1):
    return Box(Span(y0, y1), Span(x0, x1))


CANVAS = box(0, 96, 0, 128)


@pytest.mark.parametrize(
    "window", [box(0, 1, 0, 1), box(10, 40, 37, 90), box(95, 96, 0, 128), box(33, 96, 100, 128)]
)
def test_any_window_equals_the_same_window_of_a_whole_canvas_draw(window):
    whole = keyed_noise(7, 3, 4, CANVAS)
    part = keyed_noise(7, 3, 4, window)
    assert torch.equal(
        part, whole[:, window.y.start : window.y.stop, window.x.start : window.x.stop]
    )


def test_noise_is_standard_normal_and_uncorrelated():
    noise = keyed_noise(1, INITIAL_STEP, 3, box(0, 256, 0, 256)).double()
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    flat = noise.flatten().numpy()
    assert abs(np.mean(flat**3)) < 0.03 and abs(np.mean(flat**4) - 3) < 0.05  # skew, kurtosis
    for a, b in [
        (noise[:, :, 1:], noise[:, :, :-1]),
        (noise[:, 1:], noise[:, :-1]),
        (noise[0], noise[1]),
    ]:
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 0.01


@pytest.mark.parametrize("other", [dict(seed=2), dict(step=4), dict(step=INITIAL_STEP)])
def test_seed_and_step_give_independent_noise(other):
    args = dict(seed=1, step=3)
    base = keyed_noise(args["seed"], args["step"], 2, CANVAS)
    args.update(other)
    changed = keyed_noise(args["seed"], args["step"], 2, CANVAS)
    assert abs(np.corrcoef(base.flatten(), changed.flatten())[0, 1]) < 0.02


def test_far_coordinates_and_dtype():
    far = box(2**30, 2**30 + 8, 2**31 - 8, 2**31)
    noise = keyed_noise(0, 0, 1, far, dtype=torch.bfloat16)
    assert (
        noise.shape == (1, 8, 8) and noise.dtype == torch.bfloat16 and torch.isfinite(noise).all()
    )
    with pytest.raises(ValueError):
        keyed_noise(0, 0, 1, box(-1, 2, 0, 2))
