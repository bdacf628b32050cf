"""The loss of each training stage, as ``loss(step)`` closures over the data and the models.

First stage: L1 + L2 reconstruction through the codebook (straight-through) plus the codebook and
commitment terms; codes unused for a while are restarted on encoder outputs of the batch. UNet:
the diffusion loss on the first stage's (unquantized) latents, as CompVis trains it, predicting v
or the noise, conditioned by concatenation.
"""

from __future__ import annotations

import numpy as np

from tiler.train.architectures import FACTOR
from tiler.train.degrade import cloud_masks, low_resolution

RESTART_EVERY = 100  # steps between dead-code restarts
FIRST_STAGE_STREAM, UNET_STREAM, STATS_STREAM = 0, 1, 2


def _generator(seed: int, stream: int, step: int):
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 10_000_019 + step)


def first_stage_trainer(vq):
    """A module holding the VQ and its code-usage counts (saved in checkpoints with the weights)."""
    import torch

    class FirstStageTrainer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vq = vq
            self.register_buffer("usage", torch.zeros(vq.quantize.n_e))

    return FirstStageTrainer()


def first_stage_loss(trainer, sampler, batch_size: int, window: int, seed: int, device):
    import torch
    import torch.nn.functional as F

    def loss(step: int):
        images = torch.from_numpy(sampler.batch(step, FIRST_STAGE_STREAM, batch_size, window)).to(
            device
        )
        latents = trainer.vq.encode(images).latents
        quantized, codebook_loss, (_, _, indices) = trainer.vq.quantize(latents)
        decoded = trainer.vq.decode(quantized, force_not_quantize=True).sample
        with torch.no_grad():
            trainer.usage += torch.bincount(indices.flatten(), minlength=trainer.usage.numel())
            if (step + 1) % RESTART_EVERY == 0:
                _restart_dead_codes(trainer, latents, _generator(seed, FIRST_STAGE_STREAM, step))
        return F.l1_loss(decoded, images) + F.mse_loss(decoded, images) + codebook_loss.mean()

    return loss


def _restart_dead_codes(trainer, latents, generator):
    """Codes no latent picked since the last restart move onto random latents of the batch."""
    import torch

    dead = (trainer.usage == 0).nonzero().flatten()
    if len(dead):
        vectors = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        picks = torch.randint(len(vectors), (len(dead),), generator=generator).to(vectors.device)
        trainer.vq.quantize.embedding.weight.data[dead] = vectors[picks]
    trainer.usage.zero_()


def normalise_latents(
    vq, sampler, window: int, seed: int, device, batches: int = 8
) -> tuple[float, list]:
    """Fold a latent mean (per channel) and one scale into the VQ, in place, so its latents have
    mean 0 and variance 1, where diffusion starts from (the LDM-SR pipeline applies no latent
    scaling). Exact: the codebook moves with the latents and one scale for all channels keeps
    the nearest code the same; the decoder's first conv undoes it."""
    import torch

    with torch.no_grad():
        latents = torch.cat(
            [
                vq.encode(
                    torch.from_numpy(sampler.batch(index, STATS_STREAM, 8, window)).to(device)
                ).latents
                for index in range(batches)
            ]
        )
        mean = latents.mean(dim=(0, 2, 3))
        std = float(latents.std())
        vq.quant_conv.weight.data /= std
        vq.quant_conv.bias.data = (vq.quant_conv.bias.data - mean) / std
        codebook = vq.quantize.embedding.weight.data
        codebook.copy_((codebook - mean) / std)
        post = vq.post_quant_conv
        post.bias.data += post.weight.data[:, :, 0, 0] @ mean
        post.weight.data *= std
    return std, mean.tolist()


def unet_loss(task: str, unet, vq, schedule, sampler, options, device):
    """The diffusion loss of ``task``'s UNet on windows of ``options.window`` latent px."""
    import torch
    import torch.nn.functional as F

    size = options.window * FACTOR
    steps = schedule.config.num_train_timesteps

    def loss(step: int):
        images = torch.from_numpy(sampler.batch(step, UNET_STREAM, options.batch_size, size)).to(
            device
        )
        generator = _generator(options.seed, UNET_STREAM, step)
        with torch.no_grad():
            clean = vq.encode(images).latents
            condition = _condition(task, images, vq, options, generator, step, FACTOR)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(steps, (len(images),), generator=generator).to(device)
        noisy = schedule.add_noise(clean, noise, timesteps)
        target = (
            schedule.get_velocity(clean, noise, timesteps)
            if options.prediction == "v_prediction"
            else noise
        )
        predicted = unet(torch.cat([noisy, condition.to(device)], dim=1), timesteps).sample
        return F.mse_loss(predicted, target)

    return loss


def _condition(task: str, images, vq, options, generator, step: int, factor: int):
    """What tiler gives the UNet beside the latent at inference (see tiler/tasks)."""
    import torch

    if task == "superres":
        return low_resolution(images.cpu(), factor, options.blur, options.lr_noise, generator).to(
            images.device
        )
    rng = np.random.default_rng([options.seed, UNET_STREAM, step])
    fill = torch.from_numpy(cloud_masks(rng, len(images), images.shape[-1])).to(images.device)
    masked = torch.where(
        fill[:, None], torch.full_like(images, -1.0), images
    )  # CompVis: masked px -1
    mask = torch.where(fill[:, None, ::factor, ::factor], 1.0, -1.0)  # +1 fill, -1 keep
    return torch.cat([vq.encode(masked).latents, mask], dim=1)
