"""Reading a CompVis ``config.yaml``: the diffusers configs, the card, the key layout it implies,
and
the UNet's attention heads (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiler.convert.params import Params
from tiler.errors import ModelError, first_line
from tiler.ldm.loading import ATTENTION_HEADS_KEY, restore_attention_heads

GROUPS = 32  # CompVis' GroupNorm32 / Normalize: always 32 groups


def _class_name(target) -> str:
    return str(target).rsplit(".", 1)[-1]


# --- what the config says
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetLayout:
    """The openaimodel UNet's geometry, enough to name every module."""

    widths: tuple[int, ...]  # channels per level
    layers: int  # res blocks per level (down; up has one more)
    attention: tuple[bool, ...]  # attention blocks at each level
    resblock_updown: bool
    heads: dict  # attention width -> heads
    new_attention_order: bool


@dataclass(frozen=True)
class VQLayout:
    levels: int
    layers: int
    mid_attention: bool


@dataclass(frozen=True)
class Conversion:
    """Everything the config decides: the diffusers configs, the card, the key layout."""

    config_path: Path
    task: str
    conditioning: dict
    unet_config: dict
    vqvae_config: dict
    scheduler_config: dict
    unet: UNetLayout
    vq: VQLayout
    betas: Any  # numpy float64: the training schedule, to check the checkpoint's buffer
    rescaler_shape: tuple | None  # synthesis: (out, classes, 1, 1)


def read_config(config_path) -> Conversion:
    """Interpret a CompVis ``config.yaml`` (safe_load; no ``target`` is instantiated)."""
    import yaml

    path = Path(config_path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing; pass the checkpoint's CompVis config with --config "
            "(or put it beside the checkpoint as config.yaml)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: not readable YAML ({first_line(exc)})") from None
    model = Params(path, "", data).sub("model")
    if _class_name(model.get("target")) != "LatentDiffusion":
        model.fail("target", "ldm.models.diffusion.ddpm.LatentDiffusion (a latent diffusion model)")
    params = model.sub("params")
    _check_diffusion_params(params)
    vq_config, vq, latent = _first_stage(params.sub("first_stage_config"))
    task, conditioning, cond_channels, rescaler_shape = _conditioning(
        params, latent, 2 ** (vq.levels - 1)
    )
    unet_config, unet = _unet(params.sub("unet_config"), latent, cond_channels, task)
    scheduler_config, betas = _schedule(params)
    return Conversion(
        config_path=path,
        task=task,
        conditioning=conditioning,
        unet_config=unet_config,
        vqvae_config=vq_config,
        scheduler_config=scheduler_config,
        unet=unet,
        vq=vq,
        betas=betas,
        rescaler_shape=rescaler_shape,
    )


def _check_diffusion_params(params: Params) -> None:
    params.require("parameterization", ("eps",), "eps", "eps (noise prediction)")
    if params.get("scale_factor", 1.0) != 1.0 or params.flag("scale_by_std", False):
        params.fail(
            "scale_factor",
            "1.0 without scale_by_std (tiler runs the UNet on unscaled first-stage latents)",
        )
    concat_mode = params.flag("concat_mode", True)
    key = params.get("conditioning_key", None) or ("concat" if concat_mode else "crossattn")
    if key != "concat":
        params.fail(
            "conditioning_key",
            f"concat (conditioning concatenated to the latent); this config resolves to {key!r}",
        )


def _schedule(params: Params) -> tuple[dict, Any]:
    """The DDIM scheduler config of CompVis' DDIMSampler and the betas CompVis trained with."""
    import numpy as np

    if params.get("given_betas", None) is not None:
        params.fail("given_betas", "unset (a schedule from beta_schedule)")
    steps = params.int("timesteps", 1000, minimum=2)
    start, end = params.number("linear_start", 1e-4), params.number("linear_end", 2e-2)
    schedule = params.require(
        "beta_schedule", ("linear", "sqrt_linear"), "linear", "linear or sqrt_linear"
    )
    if schedule == "linear":  # CompVis "linear" is linear in sqrt(beta): diffusers' scaled_linear
        betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    else:
        betas = np.linspace(start, end, steps, dtype=np.float64)
    config = {
        "num_train_timesteps": steps,
        "beta_start": start,
        "beta_end": end,
        "beta_schedule": {"linear": "scaled_linear", "sqrt_linear": "linear"}[schedule],
        "clip_sample": False,  # LatentDiffusion sets clip_denoised = False
        # DDIMSampler: timesteps 1, 1 + T/S, ... and alphas_cumprod[0] before the first
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }
    return config, betas


def _first_stage(stage: Params) -> tuple[dict, VQLayout, int]:
    name = _class_name(stage.get("target"))
    if name != "VQModelInterface":
        stage.fail(
            "target",
            "ldm.models.autoencoder.VQModelInterface (tiler converts VQ first stages only)",
        )
    params = stage.sub("params")
    if params.get("remap", None) is not None:
        params.fail("remap", "unset (remapped codebook indices are not supported)")
    dd = params.sub("ddconfig")
    z = dd.int("z_channels", minimum=1)
    embed_dim = params.int("embed_dim", minimum=1)
    if embed_dim != z:
        params.fail(
            "embed_dim", f"{z}, the ddconfig's z_channels (tiler's latent is the first stage's z)"
        )
    if dd.flag("double_z", True):
        dd.fail("double_z", "false (a VQ encoder)")
    for name in ("tanh_out", "give_pre_end", "use_linear_attn"):
        if dd.flag(name, False):
            dd.fail(name, "false")
    if not dd.flag("resamp_with_conv", True):
        dd.fail("resamp_with_conv", "true (convolutional up/downsampling)")
    attn_type = dd.require("attn_type", ("vanilla", "none"), "vanilla", "vanilla or none")
    ch, mult = dd.int("ch", minimum=GROUPS), dd.ints("ch_mult", [1, 2, 4, 8])
    layers, resolution = dd.int("num_res_blocks", minimum=1), dd.int("resolution", minimum=1)
    attn_resolutions = dd.ints("attn_resolutions")
    levels_with_attention = [
        resolution // 2**level
        for level in range(len(mult))
        if resolution // 2**level in attn_resolutions
    ]
    if attn_type != "none" and levels_with_attention:
        dd.fail(
            "attn_resolutions",
            "[] (attention inside the encoder/decoder levels is not "
            "supported; only the middle block's)",
        )
    if not mult or any(m < 1 for m in mult):
        dd.fail("ch_mult", "a list of positive integers")
    config = {
        "in_channels": dd.int("in_channels", minimum=1),
        "out_channels": dd.int("out_ch", minimum=1),
        "down_block_types": ["DownEncoderBlock2D"] * len(mult),
        "up_block_types": ["UpDecoderBlock2D"] * len(mult),
        "block_out_channels": [ch * m for m in mult],
        "layers_per_block": layers,
        "act_fn": "silu",
        "latent_channels": z,
        "sample_size": resolution,
        "num_vq_embeddings": params.int("n_embed", minimum=1),
        "norm_num_groups": GROUPS,
        "vq_embed_dim": None,
        "scaling_factor": 1.0,
        "mid_block_add_attention": attn_type == "vanilla",
    }
    return config, VQLayout(len(mult), layers, attn_type == "vanilla"), z


def _conditioning(params: Params, latent: int, factor: int) -> tuple[str, dict, int, tuple | None]:
    """(task, card conditioning, conditioning channels, rescaler weight shape); ``factor``: the
    first stage's downsampling, which the label rescaler must match."""
    key = params.get("cond_stage_key")
    stage = params.get("cond_stage_config")
    if key == "masked_image":
        if stage != "__is_first_stage__":
            params.fail(
                "cond_stage_config",
                "__is_first_stage__ (the masked image encoded by the first stage)",
            )
        return "inpaint", {"kind": "masked-image-and-mask"}, latent + 1, None
    if key == "segmentation":
        stage = params.sub("cond_stage_config")
        if _class_name(stage.get("target")) != "SpatialRescaler":
            stage.fail("target", "ldm.modules.encoders.modules.SpatialRescaler")
        rescaler = stage.sub("params")
        out = rescaler.get("out_channels", None)
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            rescaler.fail("out_channels", "a positive integer (the learned 1x1 conv to the UNet)")
        if rescaler.flag("bias", False):
            rescaler.fail("bias", "false (tiler's label rescaler is a 1x1 conv without bias)")
        classes = rescaler.int("in_channels", 3, minimum=2)
        labels = {
            "kind": "labels",
            "classes": classes,
            "out-channels": out,
            "rescale-stages": rescaler.int("n_stages", 1, minimum=0),
            "multiplier": rescaler.number("multiplier", 0.5),
            "method": rescaler.require(
                "method",
                ("bilinear", "nearest", "bicubic", "area"),
                "bilinear",
                "bilinear, nearest, bicubic or area",
            ),
        }
        if labels["multiplier"] <= 0:
            rescaler.fail("multiplier", "a positive number")
        if abs(labels["multiplier"] ** labels["rescale-stages"] * factor - 1) > 1e-9:
            rescaler.fail(
                "n_stages",
                f"stages of x{labels['multiplier']:g} that bring labels to the "
                f"latent's 1/{factor} of the image (the first stage's factor)",
            )
        return "synthesis", labels, out, (out, classes, 1, 1)
    params.fail("cond_stage_key", "masked_image (inpainting) or segmentation (semantic synthesis)")


UNET_PARAMS = frozenset(
    {
        "image_size",
        "in_channels",
        "model_channels",
        "out_channels",
        "num_res_blocks",
        "attention_resolutions",
        "dropout",
        "channel_mult",
        "conv_resample",
        "dims",
        "num_classes",
        "use_checkpoint",
        "use_fp16",
        "num_heads",
        "num_head_channels",
        "num_heads_upsample",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_new_attention_order",
        "use_spatial_transformer",
        "transformer_depth",
        "context_dim",
        "n_embed",
        "legacy",
    }
)


def _unet(stage: Params, latent: int, cond_channels: int, task: str) -> tuple[dict, UNetLayout]:
    if _class_name(stage.get("target")) != "UNetModel":
        stage.fail("target", "ldm.modules.diffusionmodules.openaimodel.UNetModel")
    p = stage.sub("params")
    unknown = sorted(set(p.data) - UNET_PARAMS)
    if unknown:
        p.fail(
            unknown[0],
            "one of openaimodel.UNetModel's parameters (this converter does not know it)",
        )
    for name, expected in (("use_spatial_transformer", False), ("conv_resample", True)):
        if p.flag(name, expected) != expected:
            p.fail(name, str(expected).lower())
    for name in ("num_classes", "context_dim", "n_embed"):
        if p.get(name, None) is not None:
            p.fail(name, "unset (class, cross-attention and codebook UNets are not supported)")
    if p.int("dims", 2) != 2:
        p.fail("dims", "2")
    if p.int("in_channels") != latent + cond_channels:
        p.fail(
            "in_channels",
            f"{latent + cond_channels}: {latent} latent + {cond_channels} "
            f"conditioning channels for {task}",
        )
    if p.int("out_channels") != latent:
        p.fail("out_channels", f"{latent}, the first stage's latent channels")
    model_channels = p.int("model_channels", minimum=GROUPS)
    mult = p.ints("channel_mult", [1, 2, 4, 8])
    if not mult or mult[0] != 1 or any(m < 1 for m in mult):
        p.fail(
            "channel_mult",
            "positive integers starting with 1 (diffusers' time embedding and "
            "conv_in follow the first level's width)",
        )
    widths = tuple(model_channels * m for m in mult)
    resolutions = p.ints("attention_resolutions")
    attention = tuple(2**level in resolutions for level in range(len(mult)))
    heads = _attention_heads(p, sorted({widths[-1]} | {w for w, a in zip(widths, attention) if a}))
    head_dim, recorded = _diffusers_head_dim(heads)
    updown = p.flag("resblock_updown", False)
    down_types, up_types = [], []
    for level, has_attention in enumerate(attention):
        resamples = level < len(mult) - 1
        down_types.append(
            "AttnDownBlock2D"
            if has_attention
            else "ResnetDownsampleBlock2D"
            if updown and resamples
            else "DownBlock2D"
        )
    for level in reversed(range(len(mult))):
        up_types.append(
            "AttnUpBlock2D"
            if attention[level]
            else "ResnetUpsampleBlock2D"
            if updown and level > 0
            else "UpBlock2D"
        )
    config = {
        "sample_size": p.int("image_size", minimum=1),
        "in_channels": latent + cond_channels,
        "out_channels": latent,
        "block_out_channels": list(widths),
        "layers_per_block": p.int("num_res_blocks", minimum=1),
        "down_block_types": down_types,
        "up_block_types": up_types,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "attention_head_dim": head_dim,
        "attn_norm_num_groups": GROUPS,
        "resnet_time_scale_shift": "scale_shift"
        if p.flag("use_scale_shift_norm", False)
        else "default",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "norm_num_groups": GROUPS,
        "norm_eps": 1e-5,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "time_embedding_type": "positional",
        "center_input_sample": False,
        "add_attention": True,
    }
    if recorded:
        config[ATTENTION_HEADS_KEY] = recorded
    layout = UNetLayout(
        widths=widths,
        layers=config["layers_per_block"],
        attention=attention,
        resblock_updown=updown,
        heads=heads,
        new_attention_order=p.flag("use_new_attention_order", False),
    )
    return config, layout


def _attention_heads(p: Params, widths: list[int]) -> dict[int, int]:
    """Heads of the attention blocks of each width, as openaimodel.UNetModel builds them."""
    head_channels = p.int("num_head_channels", -1)
    num_heads = p.int("num_heads", -1)
    if head_channels != -1:
        if head_channels < 1 or any(w % head_channels for w in widths):
            p.fail(
                "num_head_channels", f"-1 or a positive divisor of the attention widths {widths}"
            )
        return {w: w // head_channels for w in widths}
    if num_heads < 1 or any(w % num_heads for w in widths):
        p.fail(
            "num_heads",
            f"a positive divisor of the attention widths {widths} (or set num_head_channels)",
        )
    if p.int("num_heads_upsample", -1) not in (-1, num_heads):
        p.fail("num_heads_upsample", f"-1 or {num_heads} (the same heads up and down)")
    return {w: num_heads for w in widths}


def _diffusers_head_dim(heads: dict[int, int]) -> tuple[int, int | None]:
    """diffusers' attention_head_dim for ``heads`` (width -> heads) and, when no single head width
    gives every block its CompVis heads, the fixed head count to restore after construction."""
    head_dims = {w // h for w, h in heads.items()}
    if len(head_dims) == 1:
        return head_dims.pop(), None
    num_heads = next(iter(heads.values()))  # several head widths: CompVis' fixed num_heads
    head_dim = min(heads) // num_heads  # right for the narrowest blocks (as the shared configs)
    if any(width % head_dim for width in heads):  # it must divide every width (full-width q, k, v)
        head_dim = math.gcd(*heads)
    return head_dim, num_heads


def build_unet(config: dict):
    """A UNet2DModel from a converted config (private keys such as ``_tiler_attention_heads`` are
    recorded in its config, not passed to the constructor), heads restored."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    private = {k: v for k, v in config.items() if k.startswith("_")}
    if private:
        unet.register_to_config(**private)
    return restore_attention_heads(unet)
