"""Reading a CompVis checkpoint safely, splitting its ``state_dict`` into components (EMA, first
stage, label rescaler, schedule buffers), and loading them into diffusers modules."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiler.convert.config import Conversion, build_unet
from tiler.convert.keys import (
    SUFFIXES,
    Target,
    map_state_dict,
    unet_modules,
    vq_modules,
)
from tiler.errors import ModelError, first_line

log = logging.getLogger("tiler")

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FIRST_STAGE_PREFIX = "first_stage_model."
COND_STAGE_PREFIX = "cond_stage_model."
EMA_BOOKKEEPING = frozenset({"model_ema.decay", "model_ema.num_updates"})
# DDPM.register_schedule's buffers (derived from the config) and other training-only state.
SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "lvlb_weights",
        "logvar",
    }
)
TRAINING_ONLY_PREFIXES = (
    "first_stage_model.loss.",
)  # the autoencoder's training loss (LPIPS, ...)
# Lightning's callback class, pickled as a dict key of the checkpoint's training state.
LIGHTNING_GLOBALS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)
LISTED = 3  # keys named in an error


class _InertPlaceholder:
    """Stands for a Lightning class named in a checkpoint's training state: never called."""


# --- reading the checkpoint
# ------------------------------------------------------------------------
def check_checkpoint_file(path: Path) -> None:
    """Refuse what is not a torch checkpoint file (a zip archive, or a legacy pickle) before
    reading its config or unpickling anything."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (expected a CompVis .ckpt checkpoint)") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: a folder; expected a CompVis .ckpt checkpoint file") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelError(
            f"{path}: not a torch checkpoint (it starts with {head!r}; expected a zip archive or "
            "a pickle, as torch.save writes)"
        )


def load_checkpoint(path) -> dict:
    """The ``state_dict`` of a CompVis checkpoint, read with ``weights_only=True``."""
    import pickle

    import torch

    path = Path(path)
    placeholders = [(_InertPlaceholder, name) for name in LIGHTNING_GLOBALS]
    try:
        with torch.serialization.safe_globals(placeholders):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (expected a CompVis .ckpt checkpoint)") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: a folder; expected a CompVis .ckpt checkpoint file") from None
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise ModelError(
                f"{path}: not a readable torch checkpoint ({first_line(exc)})"
            ) from None
        found = _unsupported_global(str(exc))
        raise ModelError(
            f"{path}: needs arbitrary unpickling{f' ({found})' if found else ''}, "
            "which can run code, and is refused; expected tensors and plain "
            "containers only (torch.load weights_only=True)"
        ) from None
    except Exception as exc:  # torch's unpickler raises many types (KeyError, EOFError, ...)
        raise ModelError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ModelError(
            f"{path}: no state_dict of named tensors; expected a CompVis checkpoint "
            "({'state_dict': {name: tensor}})"
        )
    return state


def _unsupported_global(message: str) -> str:
    """The class or function a weights-only load stopped at, from torch's message."""
    import re

    match = re.search(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)", message)
    return f"it names {match.group(1) or match.group(2)}" if match else ""


# --- splitting the checkpoint into components
# ------------------------------------------------------
@dataclass
class Components:
    unet: dict  # CompVis UNet names (without model.diffusion_model.) -> tensor
    first_stage: dict
    cond_stage: dict  # checked once the first stage is known to be complete (see cond_stage_weight)
    ema: bool  # whether ``unet`` holds the EMA weights


def split_checkpoint(
    state: dict, conversion: Conversion, path: Path, use_ema: bool = True
) -> Components:
    """The checkpoint's weights by component; every key is either used, checked and dropped
    (schedule buffers, EMA bookkeeping), or an error."""
    unet, first, cond, ema, unexpected = {}, {}, {}, {}, []
    for key, tensor in state.items():
        if key.startswith(UNET_PREFIX):
            unet[key[len(UNET_PREFIX) :]] = tensor
        elif key.startswith(EMA_PREFIX):
            if key not in EMA_BOOKKEEPING:
                ema[key] = tensor
        elif key.startswith(TRAINING_ONLY_PREFIXES):
            continue
        elif key.startswith(FIRST_STAGE_PREFIX):
            first[key[len(FIRST_STAGE_PREFIX) :]] = tensor
        elif key.startswith(COND_STAGE_PREFIX):
            cond[key[len(COND_STAGE_PREFIX) :]] = tensor
        elif key in SCHEDULE_BUFFERS:
            continue
        else:
            unexpected.append(key)
    if unexpected:
        raise ModelError(
            f"{path}: unexpected key(s) {_few(unexpected)}; expected "
            f"{UNET_PREFIX}*, {FIRST_STAGE_PREFIX}*, {COND_STAGE_PREFIX}*, "
            f"{EMA_PREFIX}* and the noise schedule buffers"
        )
    _check_betas(state, conversion, path)
    use = bool(ema) and use_ema
    if use:
        unet = _ema_weights(unet, ema, path)
    elif use_ema:
        log.info("%s: no %s* weights; converting the trained weights", path, EMA_PREFIX)
    return Components(unet=unet, first_stage=first, cond_stage=cond, ema=use)


def _check_betas(state: dict, conversion: Conversion, path: Path) -> None:
    import numpy as np

    if "betas" not in state:
        return
    betas = state["betas"].double().numpy()
    if betas.shape != conversion.betas.shape or not np.allclose(
        betas, conversion.betas, rtol=1e-5, atol=1e-9
    ):
        raise ModelError(
            f"{path}: betas ({betas.shape[0]} steps, {betas[0]:.6g} .. "
            f"{betas[-1]:.6g}) differ from the schedule of {conversion.config_path} "
            f"({conversion.betas.shape[0]} steps, {conversion.betas[0]:.6g} .. "
            f"{conversion.betas[-1]:.6g}); expected the config of this checkpoint"
        )


def cond_stage_weight(cond: dict, first: dict, conversion: Conversion, path: Path):
    """Synthesis: the label rescaler's weight. Inpainting: None, after checking that
    cond_stage_model.* is the first stage registered twice (as LatentDiffusion does for
    ``__is_first_stage__``); call it once the first stage has loaded, so that a key missing from
    the first stage is reported as such."""
    import torch

    if conversion.task == "inpaint":
        differing = sorted(k for k in cond if k not in first or not torch.equal(cond[k], first[k]))
        if differing:
            raise ModelError(
                f"{path}: {COND_STAGE_PREFIX}{differing[0]}: differs from the first "
                f"stage; expected {COND_STAGE_PREFIX}* to be the first stage "
                "(cond_stage_config __is_first_stage__)"
            )
        return None
    expected = {"channel_mapper.weight"}
    if set(cond) != expected:
        wrong = sorted(set(cond) ^ expected)
        raise ModelError(
            f"{path}: {COND_STAGE_PREFIX}: keys {_few(sorted(cond)) or '(none)'}; "
            f"expected only {COND_STAGE_PREFIX}channel_mapper.weight "
            f"(SpatialRescaler without bias), not {_few(wrong)}"
        )
    weight = cond["channel_mapper.weight"]
    if tuple(weight.shape) != conversion.rescaler_shape:
        raise ModelError(
            f"{path}: {COND_STAGE_PREFIX}channel_mapper.weight has shape "
            f"{tuple(weight.shape)}; expected {conversion.rescaler_shape} "
            f"(out_channels x in_channels x 1 x 1 of {conversion.config_path})"
        )
    return weight


def ema_name(unet_key: str) -> str:
    """LitEma's buffer name for a UNet parameter (below ``model.diffusion_model.``)."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def _ema_weights(unet: dict, ema: dict, path: Path) -> dict:
    names = {key: ema_name(key) for key in unet}
    collisions = len(set(names.values())) != len(names)
    missing = sorted(n for n in names.values() if n not in ema)
    extra = sorted(set(ema) - set(names.values()))
    if collisions or missing or extra:
        problem = (
            f"missing {_few(missing)}"
            if missing
            else f"unexpected {_few(extra)}"
            if extra
            else "EMA names that collide"
        )
        raise ModelError(
            f"{path}: {EMA_PREFIX}*: {problem}; expected one EMA weight per "
            f"{UNET_PREFIX} weight (or convert with --no-ema)"
        )
    return {key: ema[name] for key, name in names.items()}


def _few(keys, n: int = LISTED) -> str:
    keys = list(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --- building the diffusers modules
# ----------------------------------------------------------------
@dataclass
class Converted:
    unet: Any  # UNet2DModel, heads restored
    vqvae: Any  # VQModel
    rescaler: Any  # synthesis: the label rescaler weight (out x classes x 1 x 1), else None
    ema: bool


def convert_state_dict(
    state: dict, conversion: Conversion, path, use_ema: bool = True
) -> Converted:
    """The diffusers modules holding the checkpoint's weights (every key accounted for)."""
    from diffusers import VQModel

    path = Path(path)
    parts = split_checkpoint(state, conversion, path, use_ema)
    unet = build_unet(conversion.unet_config)
    _load(
        unet,
        parts.unet,
        unet_modules(conversion.unet),
        conversion.unet.new_attention_order,
        UNET_PREFIX,
        path,
    )
    vqvae = VQModel(**conversion.vqvae_config)
    _load(vqvae, parts.first_stage, vq_modules(conversion.vq), False, FIRST_STAGE_PREFIX, path)
    rescaler = cond_stage_weight(parts.cond_stage, parts.first_stage, conversion, path)
    rescaler = None if rescaler is None else rescaler.float().contiguous()
    return Converted(unet=unet.eval(), vqvae=vqvae.eval(), rescaler=rescaler, ema=parts.ema)


def _load(
    module, weights: dict, table: dict[str, Target], new_order: bool, where: str, path: Path
) -> None:
    """Map ``weights`` and load them into ``module`` strictly; a one-line error otherwise."""
    converted, sources, unmapped = map_state_dict(weights, table, new_order, where)
    if unmapped:
        raise ModelError(
            f"{path}: unexpected key(s) {_few(unmapped)}; not part of the "
            f"{type(module).__name__} that {where}* of the config describes"
        )
    expected = module.state_dict()
    missing = [k for k in expected if k not in converted]
    if missing:
        names = list(
            dict.fromkeys(_compvis_name(k, table, where) for k in missing)
        )  # q, k, v: one qkv
        raise ModelError(
            f"{path}: missing key(s) {_few(names)}; the config describes "
            f"{len(expected)} weights of the {type(module).__name__}"
        )
    extra = [sources[k] for k in converted if k not in expected]
    if extra:
        raise ModelError(
            f"{path}: unexpected key(s) {_few(extra)}; not part of the "
            f"{type(module).__name__} that the config describes"
        )
    for key, tensor in converted.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"{path}: {sources[key]}: shape {tuple(tensor.shape)} does not fit "
                f"{key} {tuple(expected[key].shape)}; expected the checkpoint of "
                "this config"
            )
    module.load_state_dict(converted, strict=True)


def _compvis_name(diffusers_key: str, table: dict[str, Target], where: str) -> str:
    """The CompVis key that would have given ``diffusers_key`` (for messages)."""
    for module, target in table.items():
        if not diffusers_key.startswith(target.prefix + "."):
            continue
        sub, _, param = diffusers_key[len(target.prefix) + 1 :].rpartition(".")
        for compvis_sub, name in SUFFIXES[target.kind].items():
            if sub == name or (sub in ("to_q", "to_k", "to_v") and name == "to_q|to_k|to_v"):
                return ".".join(part for part in (where + module, compvis_sub, param) if part)
    return f"(diffusers) {diffusers_key}"
