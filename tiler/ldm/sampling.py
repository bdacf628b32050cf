"""The lockstep fused denoising loop over one region's canvas.

Every timestep, all tiles of the canvas go through the UNet (in batches), their noise predictions
are fused on the canvas with partition-of-unity weights, and ONE scheduler step runs on the whole
canvas. Multistep schedulers therefore keep a single state, and the step noise (keyed by pixel
position) is global: overlaps neither shrink the noise (as averaging independently stepped tiles
does) nor ghost (as feathering independently generated tiles does).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from tiler.geometry.grid import Box
from tiler.geometry.weights import tile_weights
from tiler.ldm.noise import INITIAL_STEP, keyed_noise


@dataclass(frozen=True)
class SamplingOptions:
    steps: int
    eta: float
    seed: int
    batch_size: int
    overlap: int


def tile_slices(tiles: tuple[Box, ...], canvas: Box) -> list[tuple[slice, slice]]:
    return [tile.relative_to(canvas) for tile in tiles]


def fusion_weights(tiles: tuple[Box, ...], canvas: Box, overlap: int, device, dtype=torch.float32):
    """Per-tile weights (T, T) and the reciprocal of their sum over the canvas (h, w); 0 where no
    tile covers the canvas (inpainting computes only the tiles near the mask)."""
    size = tiles[0].shape[0]
    weights = torch.tensor(tile_weights(size, overlap), dtype=dtype, device=device)
    total = torch.zeros(canvas.shape, dtype=dtype, device=device)
    for rows, cols in tile_slices(tiles, canvas):
        total[rows, cols] += weights
    return weights, torch.where(total > 0, total.reciprocal(), torch.zeros_like(total))


def step_kwargs(scheduler, eta: float) -> dict:
    parameters = inspect.signature(scheduler.step).parameters
    return {"eta": eta} if "eta" in parameters else {}


def needs_step_noise(scheduler, eta: float) -> bool:
    """Whether this scheduler's step injects noise (then tiler supplies keyed
    ``variance_noise``)."""
    from tiler.ldm.samplers import step_accepts_noise

    if not step_accepts_noise(scheduler):
        return False
    if "eta" in inspect.signature(scheduler.step).parameters:
        return eta > 0
    return "sde" in str(getattr(scheduler.config, "algorithm_type", ""))


def denoise_canvas(
    unet_call,
    scheduler,
    condition: torch.Tensor,
    canvas: Box,
    tiles: tuple[Box, ...],
    latent_channels: int,
    options: SamplingOptions,
) -> torch.Tensor:
    """Denoise the latent of ``canvas`` conditioned on ``condition`` (cond_channels, h, w).

    ``unet_call(model_input, timestep) -> noise prediction`` runs the UNet on a batch of tiles;
    ``scheduler`` is a fresh scheduler owned by this canvas. Returns the latent (C, h, w), float32.
    """
    device = condition.device
    # Timesteps stay on the host for the scheduler's arithmetic (scalars, no GPU sync inside the
    # loop); the UNet gets them from one copy made on the device before the loop.
    scheduler.set_timesteps(options.steps)
    device_timesteps = scheduler.timesteps.to(device)
    slices = tile_slices(tiles, canvas)
    weights, inverse_total = fusion_weights(tiles, canvas, options.overlap, device)
    condition_tiles = torch.stack([condition[:, rows, cols] for rows, cols in slices])
    latents = keyed_noise(options.seed, INITIAL_STEP, latent_channels, canvas, device)
    latents = (latents * scheduler.init_noise_sigma)[None]
    extra = step_kwargs(scheduler, options.eta)
    inject = needs_step_noise(scheduler, options.eta)
    for index, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)[0]
        fused = torch.zeros_like(model_input)
        for start in range(0, len(slices), options.batch_size):
            batch = slices[start : start + options.batch_size]
            inputs = torch.cat(
                [
                    torch.stack([model_input[:, r, c] for r, c in batch]),
                    condition_tiles[start : start + len(batch)],
                ],
                dim=1,
            )
            noise_pred = unet_call(inputs, device_timesteps[index]).float()
            for (rows, cols), prediction in zip(batch, noise_pred):
                fused[:, rows, cols] += prediction * weights
        fused *= inverse_total
        if inject:
            extra["variance_noise"] = keyed_noise(
                options.seed, index, latent_channels, canvas, device
            )[None]
        latents = scheduler.step(fused[None], timestep, latents, **extra).prev_sample
    return latents[0]
