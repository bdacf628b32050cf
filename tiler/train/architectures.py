"""The model shapes ``tiler train`` builds, by ``--size`` (tiny: tests; small: the bundled models on
a 2-core CPU; base: a GPU). Both stages follow CompVis' layouts at a smaller width: a VQ first
stage with f = 4 (3 latent channels, an 8192-entry codebook; mid-block attention for
super-resolution, none for inpainting) and a UNet with attention at its lowest resolution."""

from __future__ import annotations

from dataclasses import dataclass

FACTOR = 4  # the first stage's downsampling factor: 2 ** (number of blocks - 1)
LATENT_CHANNELS = 3
CODEBOOK = 8192


@dataclass(frozen=True)
class Shape:
    vq_channels: tuple[int, ...]
    vq_layers: int
    unet_channels: tuple[int, ...]
    unet_layers: int
    groups: int
    head_dim: int


SHAPES = {
    "tiny": Shape((16, 32, 32), 1, (32, 32, 64), 1, 8, 16),
    "small": Shape((32, 64, 64), 1, (48, 64, 96), 1, 16, 32),
    "base": Shape((128, 128, 256), 2, (128, 256, 384), 2, 32, 64),
}


def first_stage(size: str, attention: bool, codebook: int = CODEBOOK):
    """A new diffusers VQModel (random weights)."""
    from diffusers import VQModel

    shape = SHAPES[size]
    blocks = len(shape.vq_channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        vq_embed_dim=LATENT_CHANNELS,
        num_vq_embeddings=codebook if size != "tiny" else 256,
        block_out_channels=shape.vq_channels,
        layers_per_block=shape.vq_layers,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=shape.groups,
        mid_block_add_attention=attention,
        scaling_factor=1.0,
    )


def unet(size: str, condition_channels: int, window: int):
    """A new diffusers UNet2DModel: latent ++ conditioning in, latent out."""
    from diffusers import UNet2DModel

    shape = SHAPES[size]
    levels = len(shape.unet_channels)
    return UNet2DModel(
        sample_size=window,
        in_channels=LATENT_CHANNELS + condition_channels,
        out_channels=LATENT_CHANNELS,
        block_out_channels=shape.unet_channels,
        layers_per_block=shape.unet_layers,
        norm_num_groups=shape.groups,
        attention_head_dim=shape.head_dim,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    )


def noise_schedule(prediction: str):
    """The training noise schedule (CompVis LDM: 1000 steps, linear in sqrt(beta), 0.0015..0.0155),
    as the DDIM scheduler the folder ships."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0155,
        beta_schedule="scaled_linear",
        prediction_type=prediction,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
