"""``tiler convert``: an original CompVis latent-diffusion checkpoint (``.ckpt``) and its
``config.yaml`` -> a tiler model folder (see tiler/ldm/card.py): diffusers ``unet/``, ``vqvae/``,
``scheduler/``, ``tiler.yaml`` and, for semantic synthesis,
``cond_stage/label_rescaler.safetensors``.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only.
The one non-tensor class real CompVis checkpoints carry, Lightning's ``ModelCheckpoint`` (a dict key
of the training-callback state), is bound to an inert placeholder; anything else that needs
arbitrary unpickling is refused. The config is read with ``yaml.safe_load`` and interpreted, its
``target`` classes are never imported.

Key layout of the ``state_dict`` of a CompVis ``LatentDiffusion`` (concat conditioning)::

    model.diffusion_model.*    openaimodel.UNetModel (the weights trained last)
        time_embed.{0,2}                  Linear, Linear        -> time_embedding.linear_{1,2}
        input_blocks.0.0                  conv in               -> conv_in
        input_blocks.N.0                  ResBlock              -> down_blocks.L.resnets.J
        input_blocks.N.1                  AttentionBlock        -> down_blocks.L.attentions.J
        input_blocks.N.0(.op)             ResBlock(down) | conv ->
        down_blocks.L.downsamplers.0(.conv)
        middle_block.{0,1,2}              Res, Attention, Res   -> mid_block.resnets.0,
        .attentions.0,
                                                                   .resnets.1
        output_blocks.N.{0,1}             ResBlock, Attention   ->
        up_blocks.U.{resnets,attentions}.J
        output_blocks.N.K(.conv)          ResBlock(up) | conv   -> up_blocks.U.upsamplers.0(.conv)
        out.{0,2}                         GroupNorm, conv       -> conv_norm_out, conv_out
      ResBlock: in_layers.{0,2} emb_layers.1 out_layers.{0,3} skip_connection
             -> norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
      AttentionBlock: norm, qkv (conv1d C -> 3C), proj_out (conv1d)
             -> group_norm, to_q/to_k/to_v (Linear), to_out.0; qkv rows are ordered
                (heads, q|k|v, head dim), or (q|k|v, heads, head dim) with use_new_attention_order
    model_ema.*                the EMA of every UNet parameter, named ``diffusion_model`` + the
                               parameter's name without dots (LitEma); plus decay, num_updates
    first_stage_model.*        VQModelInterface (taming layout; diffusers' VQModel has the same
    modules)
        encoder.down.L.block.J                  -> encoder.down_blocks.L.resnets.J
        encoder.down.L.downsample.conv          -> encoder.down_blocks.L.downsamplers.0.conv
        *.mid.block_{1,2}, *.mid.attn_1         -> *.mid_block.resnets.{0,1},
        *.mid_block.attentions.0
        decoder.up.L.block.J, .upsample.conv    -> decoder.up_blocks.(levels-1-L).resnets.J,
        .upsamplers.0.conv
        *.conv_in, *.norm_out, *.conv_out       -> *.conv_in, *.conv_norm_out, *.conv_out
        quant_conv, post_quant_conv, quantize.embedding   (same names)
      ResnetBlock: norm1 conv1 norm2 conv2 nin_shortcut -> ... conv_shortcut
      AttnBlock: norm q k v proj_out (1x1 conv2d) -> group_norm to_q to_k to_v to_out.0 (Linear)
    cond_stage_model.*         inpainting (``__is_first_stage__``): the first stage again (ignored,
                               checked to be identical); synthesis: SpatialRescaler's
                               channel_mapper.weight -> cond_stage/label_rescaler.safetensors
    betas, alphas_cumprod, ... the training noise schedule: checked against the config, not kept

The mapping is a table of module names built from the config, so every checkpoint key is either
mapped, checked and dropped, or reported. diffusers' ``convert_ldm_vae_checkpoint`` maps the first
stage the same way (checked), but matches keys by substring and silently drops those it does not
know; its UNet helpers target UNet2DConditionModel, not openaimodel's UNet -> UNet2DModel.

Weights: the EMA weights when the checkpoint has them (``use_ema``, the default), as CompVis'
sampling scripts run the model inside ``ema_scope()``; otherwise the trained ones.

Attention heads: CompVis attention has a fixed number of heads (``num_heads``) or a fixed head width
(``num_head_channels``); diffusers' UNet2DModel has one ``attention_head_dim`` for every block. When
that cannot give CompVis' head count in every block (fixed heads over blocks of different widths,
e.g. the inpainting model), the unet config records ``_tiler_attention_heads`` and whoever loads
the UNet must call ``config.restore_attention_heads`` (idempotent; tiler.models does).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from tiler.convert.checkpoint import (
    Converted,
    check_checkpoint_file,
    convert_state_dict,
    load_checkpoint,
)
from tiler.convert.config import Conversion, read_config
from tiler.errors import OutputError
from tiler.ldm.card import (
    CARD,
    RESCALER,
    RESCALER_KEY,
    ModelCard,
    read_card,
    write_card,
)


# --- the whole conversion
# --------------------------------------------------------------------------
def convert_checkpoint(
    ckpt_path, out_dir, config_path=None, overwrite: bool = False, use_ema: bool = True
) -> Path:
    """Convert a CompVis checkpoint into a tiler model folder at ``out_dir``, written whole or not
    at all (built in a temporary sibling folder, renamed at the end). Returns ``out_dir``."""
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    config_path = Path(config_path) if config_path else ckpt_path.parent / "config.yaml"
    _remove_stale_staging(out_dir)
    check_checkpoint_file(ckpt_path)
    _check_destination(out_dir, overwrite)
    conversion = read_config(config_path)
    state = load_checkpoint(ckpt_path)
    converted = convert_state_dict(state, conversion, ckpt_path, use_ema)
    del state
    card = ModelCard.model_validate(
        {
            "task": conversion.task,
            "name": _model_name(ckpt_path),
            "first-stage": "vqvae",
            "scale": 1,
            "conditioning": conversion.conditioning,
            "source": f"CompVis latent-diffusion checkpoint {ckpt_path.name} ("
            f"{'EMA' if converted.ema else 'trained'} weights), config {config_path.name}",
        }
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-{os.getpid()}-", dir=out_dir.parent)
    )
    try:
        _write_folder(staging, converted, conversion, card)
        read_card(staging)  # the folder checks tiler's loaders make
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _remove_stale_staging(out_dir: Path) -> None:
    """Remove the staging folders of conversions into ``out_dir`` whose process is gone (a run
    killed before its rename); those of a live run are left alone."""
    for folder in out_dir.parent.glob(f".{out_dir.name}.converting-*"):
        match = re.fullmatch(rf"\.{re.escape(out_dir.name)}\.converting-(\d+)-\w+", folder.name)
        if match is None or not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _model_name(ckpt_path: Path) -> str:
    """The checkpoint's stem, or its folder's name for CompVis' generic names (last.ckpt,
    model.ckpt)."""
    stem = ckpt_path.stem
    return ckpt_path.resolve().parent.name if stem in ("last", "model", "checkpoint") else stem


def _write_folder(
    folder: Path, converted: Converted, conversion: Conversion, card: ModelCard
) -> None:
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    converted.unet.save_pretrained(folder / "unet", safe_serialization=True)
    converted.vqvae.save_pretrained(folder / "vqvae", safe_serialization=True)
    DDIMScheduler(**conversion.scheduler_config).save_pretrained(folder / "scheduler")
    if converted.rescaler is not None:
        (folder / RESCALER).parent.mkdir(parents=True, exist_ok=True)
        save_file({RESCALER_KEY: converted.rescaler}, str(folder / RESCALER))
    write_card(folder, card)


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing OUT_DIR without ``overwrite``, and with it anything but a tiler model
    folder or an empty folder (so a mistyped path never deletes unrelated files)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not overwrite:
        raise OutputError(
            f"{out_dir}: exists; pass --overwrite to replace it, or choose a new folder"
        )
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise OutputError(
            f"{out_dir}: not a folder; expected a new path or a tiler model folder to replace"
        )
    if any(out_dir.iterdir()) and not (out_dir / CARD).is_file():
        raise OutputError(
            f"{out_dir}: a folder without {CARD}; --overwrite replaces only tiler "
            "model folders (or empty ones)"
        )


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    _check_destination(out_dir, overwrite)  # again: the conversion took a while
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
