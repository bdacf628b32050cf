"""Tiny random-initialised LDM super-resolution models for tests.

Same classes and channel layout as the real CompVis/ldm-super-resolution-4x-openimages model
(``../shared/models/ldm-super-resolution-4x.json``): a ``UNet2DModel`` taking latent (3) ++ low-res
image (3) and predicting 3 channels, a ``VQModel`` with three levels (f = 4, 3 latent channels) and
the model's DDIM scheduler config; only the widths are tiny. ``save_tiny_sr_model`` writes them in
the diffusers ``LDMSuperResolutionPipeline`` layout so tests load them through the same code path as
a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

# The real model's scheduler config (from the model card json).
SCHEDULER_CONFIG = {
    "beta_start": 0.0015,
    "beta_end": 0.0155,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
}


def tiny_unet():
    """A UNet2DModel with the real model's channel layout (6 in, 3 out) and block types, tiny
    widths."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=16,
        in_channels=6,
        out_channels=3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        mid_block_scale_factor=1,
        norm_eps=1e-5,
        time_embedding_type="positional",
        center_input_sample=False,
    )


# the tiny first stages' shared layout: three levels (f = 4), 3 latent and 3 image channels
FIRST_STAGE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=3,
    sample_size=32,
    norm_num_groups=8,
)


def tiny_vqvae():
    """A VQModel with three levels (f = 4), 3 latent channels and 3 image channels, tiny widths."""
    from diffusers import VQModel

    return VQModel(**FIRST_STAGE, num_vq_embeddings=64, vq_embed_dim=None)


def tiny_kl():
    """An AutoencoderKL (the KL first stage of Stable Diffusion-style LDMs) with the tiny VQ's
    layout and a scaling factor, as a ``vae/`` folder holds it."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**FIRST_STAGE, scaling_factor=0.5, mid_block_add_attention=False)


def tiny_scheduler():
    from diffusers.schedulers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def save_tiny_sr_model(path, seed: int = 0, safetensors: bool = True) -> Path:
    """Build the tiny models with ``torch.manual_seed(seed)`` and save them under ``path`` in the
    LDMSuperResolutionPipeline layout (model_index.json, unet/, vqvae/, scheduler/).
    ``safetensors=False`` saves pickle weights (``diffusion_pytorch_model.bin``)."""
    import diffusers
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tiny_unet().save_pretrained(path / "unet", safe_serialization=safetensors)
    tiny_vqvae().save_pretrained(path / "vqvae", safe_serialization=safetensors)
    tiny_scheduler().save_pretrained(path / "scheduler")
    model_index = {
        "_class_name": "LDMSuperResolutionPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
        "vqvae": ["diffusers", "VQModel"],
    }
    (path / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    return path


def save_tiny_ldm(
    path,
    task: str,
    conditioning: dict,
    cond_channels: int,
    seed: int = 0,
    attention: bool = True,
    first_stage: str = "vqvae",
) -> Path:
    """A tiny model in tiler's model-directory format (unet/, vqvae/ or vae/, scheduler/,
    tiler.yaml): the real inpainting / synthesis layouts (``../shared/models/ldm-*.json``), tiny
    widths. ``attention=False``: a first stage without mid-block attention, like the inpainting
    VQ; ``first_stage="vae"``: a KL first stage (AutoencoderKL) instead of the VQ."""
    import torch

    from tiler.ldm.card import ModelCard, write_card

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with_config(tiny_unet(), in_channels=3 + cond_channels).save_pretrained(path / "unet")
    coder = tiny_vqvae() if first_stage == "vqvae" else tiny_kl()
    with_config(coder, mid_block_add_attention=attention).save_pretrained(path / first_stage)
    tiny_scheduler().save_pretrained(path / "scheduler")
    card = {"task": task, "conditioning": conditioning, "name": f"tiny {task}"}
    write_card(path, ModelCard.model_validate(card | {"first-stage": first_stage}))
    return path


def with_config(module, **changes):
    """The same class built with ``changes`` to its config (diffusers' from_config would restore
    the defaults of keys it recorded as defaulted)."""
    config = {key: value for key, value in module.config.items() if not key.startswith("_")}
    return type(module)(**(config | changes))


def save_tiny_inpaint_model(path, seed: int = 0, first_stage: str = "vqvae") -> Path:
    """``first_stage``: ``vqvae`` (the CompVis inpainting layout) or ``vae`` (a KL first stage)."""
    return save_tiny_ldm(
        path,
        "inpaint",
        {"kind": "masked-image-and-mask"},
        3 + 1,
        seed,
        attention=False,
        first_stage=first_stage,
    )


def save_tiny_synthesis_model(path, classes: int = 6, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file

    path = save_tiny_ldm(path, "synthesis", {"kind": "labels", "classes": classes}, 3, seed)
    (path / "cond_stage").mkdir(exist_ok=True)
    weight = torch.randn(3, classes, 1, 1, generator=torch.Generator().manual_seed(seed))
    save_file(
        {"channel_mapper.weight": weight}, str(path / "cond_stage" / "label_rescaler.safetensors")
    )
    return path


# --- text-conditioned pipelines (the Stable Diffusion x4 upscaler, Stable Diffusion inpainting) ---
# The real architectures are in ../shared/models/sd-x4-upscaler.json: a UNet2DConditionModel with
# cross-attention to CLIP text embeddings, an AutoencoderKL with 4 latent channels, a CLIPTextModel
# and its tokenizer; only the widths here are tiny. TOKENS: the tiny tokenizer's limit (CLIP: 77).
TOKENS = 16
TEXT_WIDTH = 32


def _byte_characters() -> list[str]:
    """The 256 printable stand-ins of bytes that byte-level BPE vocabularies (CLIP's) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def save_tiny_tokenizer(folder, limit: int = TOKENS) -> Path:
    """A CLIP tokenizer with a byte-level vocabulary (every byte, alone and word-final), a few
    merges, CLIP's start and end tokens and a ``limit`` of tokens, saved by transformers."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = _byte_characters()
    vocab = {
        token: index for index, token in enumerate(characters + [c + "</w>" for c in characters])
    }
    merges = ["t h", "th e</w>", "r i", "ri v"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    source = folder / "source"
    source.mkdir(exist_ok=True)
    (source / "vocab.json").write_text(json.dumps(vocab))
    (source / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(source / "vocab.json"), str(source / "merges.txt"), model_max_length=limit
    )
    tokenizer.save_pretrained(str(folder))
    for path in source.iterdir():
        path.unlink()
    source.rmdir()
    return folder


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=TOKENS,
            vocab_size=vocab_size,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=TEXT_WIDTH,
        )
    )


def tiny_cond_unet(in_channels: int, class_embeds: int | None = None):
    """A UNet2DConditionModel with the x4 upscaler's block types (cross-attention in the lower
    levels, linear projections), tiny widths; ``class_embeds``: the noise-level classes."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
        num_class_embeds=class_embeds,
        use_linear_projection=True,
    )


def tiny_sd_vae(levels: int, scaling_factor: float):
    """An AutoencoderKL with 4 latent channels and ``levels`` levels (f = 2 ** (levels - 1)), with
    the mid-block attention the real ones have."""
    from diffusers import AutoencoderKL

    layout = dict(
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16)[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
    )
    return AutoencoderKL(**(FIRST_STAGE | layout), scaling_factor=scaling_factor)


def _text_parts(path: Path):
    tokenizer_folder = save_tiny_tokenizer(path / "tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder))
    return tokenizer, tiny_text_encoder(len(tokenizer))


def save_tiny_sd_upscaler(path, seed: int = 0) -> Path:
    """A tiny StableDiffusionUpscalePipeline saved by diffusers (model_index.json, unet/, vae/ with
    f = 4, text_encoder/, tokenizer/, scheduler/ predicting v, low_res_scheduler/), with the real
    model's schedulers and scaling factor."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
        StableDiffusionUpscalePipeline,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_parts(path)
    schedule = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    pipeline = StableDiffusionUpscalePipeline(
        vae=tiny_sd_vae(3, 0.08333),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_cond_unet(4 + 3, class_embeds=1000),
        low_res_scheduler=DDPMScheduler(**schedule, clip_sample=True),
        scheduler=DDIMScheduler(
            **schedule,
            clip_sample=False,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        watermarker=None,
        max_noise_level=350,
    )
    pipeline.save_pretrained(str(path))
    return path


def save_tiny_sd_inpainter(path, seed: int = 0) -> Path:
    """A tiny StableDiffusionInpaintPipeline saved by diffusers: a 9-channel UNet (latent, mask,
    masked-image latent), a KL first stage with f = 8, text encoder and tokenizer, Stable Diffusion
    2's DDIM schedule."""
    import torch
    from diffusers import DDIMScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
        StableDiffusionInpaintPipeline,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _text_parts(path)
    pipeline = StableDiffusionInpaintPipeline(
        vae=tiny_sd_vae(4, 0.18215),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_cond_unet(4 + 1 + 4),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(path))
    return path
