"""Loading a model folder for inference: an ``LDMModel`` (UNet + VQ or KL first stage + the
scheduler config) on a device in a dtype, made batch invariant on CPU. The folder's format decides
how it is checked (tiler/ldm/folders.py); a text encoder is loaded apart, once per run, by
tiler/ldm/text.py. Nothing heavy is imported at module level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiler.errors import ModelError, first_line
from tiler.ldm.batch_invariance import enable_cpu_determinism, make_batch_invariant
from tiler.ldm.card import read_card
from tiler.ldm.devices import resolve_device, resolve_dtype
from tiler.ldm.folders import (
    SAFETENSORS_SUFFIX,
    SR_PIPELINE,
    check_pipeline_layout,
    check_weights,
    first_stage_factor,
    is_tiler_folder,
    read_scheduler_config,
    resolve_model_dir,
)
from tiler.ldm.samplers import scheduler_from_config

if TYPE_CHECKING:  # pragma: no cover
    import torch


# --- the model
# -------------------------------------------------------------------------------------
@dataclass(eq=False)
class LDMModel:
    """A loaded LDM: UNet (latent ++ conditioning -> noise prediction) and first stage, in eval
    mode without gradients, on ``device`` in ``dtype``. ``vqvae`` holds the first stage, a VQModel
    or (``first_stage_kind`` "vae") an AutoencoderKL."""

    unet: Any
    vqvae: Any
    scheduler_config: dict
    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    name: str = ""
    first_stage_kind: str = "vqvae"
    pipeline: str = ""  # the diffusers pipeline class; "" for tiler's model-directory format

    @property
    def scale(self) -> int:
        """Pixel size of one latent px (f): 4 for the CompVis model; also the upscale factor, as the
        latent grid is the low-resolution pixel grid."""
        return first_stage_factor(self.vqvae.config)

    @property
    def latent_channels(self) -> int:
        return int(self.vqvae.config.latent_channels)

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning (the low-res image) concatenated after the latent."""
        return int(self.unet.config.in_channels) - self.latent_channels

    def make_scheduler(self, sampler: str = "ddim"):
        """A fresh scheduler for ``sampler`` (schedulers hold per-run state: one per region)."""
        return scheduler_from_config(self.scheduler_config, sampler)


def load_model(
    model: str, device: str = "auto", dtype: str | None = None, allow_pickle: bool = False
) -> LDMModel:
    """Load the model folder ``model`` (hub id or local folder) with the loader of its format."""
    model_dir = resolve_model_dir(model, allow_pickle=allow_pickle)
    load = load_ldm_model if is_tiler_folder(model_dir) else load_pipeline_model
    return load(str(model_dir), device=device, dtype=dtype, allow_pickle=allow_pickle)


def load_pipeline_model(
    model: str, device: str = "auto", dtype: str | None = None, allow_pickle: bool = False
) -> LDMModel:
    """Load an LDMSuperResolutionPipeline (hub id or local folder) for inference on ``device``.
    On CPU the UNet and the VQ model are made batch invariant and oneDNN is switched off
    (process-wide), so a tile's result does not depend on how tiles are batched; the UNet must then
    be called with one timestep per call (see make_batch_invariant)."""
    # 1. check the cheap things first: device, dtype, then the folder and its weights
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_dir = resolve_model_dir(model, allow_pickle=allow_pickle)
    pipeline = check_pipeline_layout(model_dir)
    models = ("unet", pipeline.first_stage)  # the text encoder is loaded apart (ldm/text.py)
    weights = check_weights(model_dir, models, allow_pickle=allow_pickle)
    scheduler_config = read_scheduler_config(model_dir)
    # 2. load the weights, check the channel layout, make CPU batch invariant
    return _load_components(
        model_dir,
        weights,
        scheduler_config,
        torch_device,
        torch_dtype,
        str(model),
        first_stage=pipeline.first_stage,
        pipeline=pipeline.name,
    )


def load_ldm_model(
    model_dir, device: str = "auto", dtype: str | None = None, allow_pickle: bool = False
) -> LDMModel:
    """Load a model in tiler's model-directory format (``tiler.yaml``, see tiler/ldm/card.py)
    with a VQ (``vqvae/``) or KL (``vae/``, AutoencoderKL) first stage; the same checks, placement
    and CPU batch invariance as LDM-SR."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = check_weights(model_dir, ("unet", card.first_stage), allow_pickle=allow_pickle)
    return _load_components(
        model_dir,
        weights,
        read_scheduler_config(model_dir),
        torch_device,
        torch_dtype,
        str(model_dir),
        first_stage=card.first_stage,
    )


def _load_components(
    model_dir: Path,
    weights: dict[str, Path],
    scheduler_config: dict,
    torch_device,
    torch_dtype,
    name: str,
    first_stage: str = "vqvae",
    pipeline: str = "",
) -> LDMModel:
    """Load the UNet (a UNet2DModel, or a UNet2DConditionModel for text-conditioned pipelines) and
    the first stage (``vqvae``: VQModel, ``vae``: AutoencoderKL), check their channel layout, make
    them batch invariant on CPU."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
    from diffusers.utils import is_accelerate_available

    coder_class = {"vqvae": VQModel, "vae": AutoencoderKL}[first_stage]
    unet_class = UNet2DModel if pipeline in ("", SR_PIPELINE) else UNet2DConditionModel
    loaded = {}
    for component, model_class in (("unet", unet_class), (first_stage, coder_class)):
        folder = model_dir / component
        try:
            module = model_class.from_pretrained(
                folder,
                use_safetensors=weights[component].suffix == SAFETENSORS_SUFFIX,
                torch_dtype=_component_dtype(model_class, folder, torch_dtype),
                low_cpu_mem_usage=is_accelerate_available(),
            )
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelError(
                f"{folder}: cannot load a {model_class.__name__}: {first_line(error)}"
            ) from error
        if component == "unet":  # a converted CompVis UNet may fix its attention heads
            restore_attention_heads(module)
        module.eval().requires_grad_(False)
        module.to(torch_device)
        if torch_device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        loaded[component] = module

    sr = LDMModel(
        unet=loaded["unet"],
        vqvae=loaded[first_stage],
        first_stage_kind=first_stage,
        pipeline=pipeline,
        scheduler_config=scheduler_config,
        model_dir=model_dir,
        device=torch_device,
        dtype=torch_dtype,
        name=name,
    )

    # the channel layout: UNet input = latent ++ conditioning, output = latent
    unet_config = sr.unet.config
    if unet_config.out_channels != sr.latent_channels or sr.cond_channels < 1:
        raise ModelError(
            f"{model_dir / 'unet'}: in_channels {unet_config.in_channels}, out_channels "
            f"{unet_config.out_channels} do not fit the first stage's {sr.latent_channels} latent "
            "channels "
            "(expected in = latent + conditioning channels, out = latent channels)"
        )

    # CPU: a tile's result independent of how tiles are batched (UNet steps and VQ decodes)
    if torch_device.type == "cpu":
        enable_cpu_determinism()
        make_batch_invariant(sr.unet)
        make_batch_invariant(sr.vqvae)
    return sr


def _component_dtype(model_class, folder: Path, torch_dtype):
    """float32 for a KL first stage asked for float16 whose config says ``force_upcast`` (the x4
    upscaler's VAE overflows in half precision; diffusers upcasts it for the same reason)."""
    import json

    import torch

    if model_class.__name__ != "AutoencoderKL" or torch_dtype != torch.float16:
        return torch_dtype
    config = json.loads((folder / "config.json").read_text())
    return torch.float32 if config.get("force_upcast", True) else torch_dtype


ATTENTION_HEADS_KEY = "_tiler_attention_heads"


def restore_attention_heads(unet):
    """Give every Attention of a converted UNet CompVis' fixed head count when its config records
    one (``_tiler_attention_heads``); a no-op otherwise. In place; returns ``unet``."""
    heads = unet.config.get(ATTENTION_HEADS_KEY) if hasattr(unet, "config") else None
    if not heads:
        return unet
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention):
            width = module.to_q.out_features
            module.heads = module.sliceable_head_dim = int(heads)
            module.scale = (width // int(heads)) ** -0.5
    return unet
