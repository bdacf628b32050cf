"""The key tables: CompVis module names -> diffusers module names, and the tensor conversions
(attention qkv split, 1x1 convs to Linear)."""

from __future__ import annotations

from typing import NamedTuple

from tiler.convert.config import UNetLayout, VQLayout
from tiler.errors import ModelError


# --- mapping the keys
# ------------------------------------------------------------------------------
class Target(NamedTuple):
    prefix: str  # the diffusers module
    kind: str  # how the parameter names below the module map
    heads: int = 0  # attention: CompVis heads


SAME, UNET_RES, UNET_ATTN, VQ_RES, VQ_ATTN = "same", "unet-res", "unet-attn", "vq-res", "vq-attn"
SUFFIXES = {  # CompVis submodule -> diffusers submodule, per kind
    SAME: {"": ""},
    UNET_RES: {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    },
    UNET_ATTN: {"norm": "group_norm", "qkv": "to_q|to_k|to_v", "proj_out": "to_out.0"},
    VQ_RES: {
        "norm1": "norm1",
        "conv1": "conv1",
        "norm2": "norm2",
        "conv2": "conv2",
        "nin_shortcut": "conv_shortcut",
    },
    VQ_ATTN: {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
}


def unet_modules(layout: UNetLayout) -> dict[str, Target]:
    """CompVis UNet module names (below ``model.diffusion_model.``) -> diffusers modules."""
    table = {
        "time_embed.0": Target("time_embedding.linear_1", SAME),
        "time_embed.2": Target("time_embedding.linear_2", SAME),
        "input_blocks.0.0": Target("conv_in", SAME),
        "out.0": Target("conv_norm_out", SAME),
        "out.2": Target("conv_out", SAME),
    }
    levels = len(layout.widths)
    block = 1
    for level in range(levels):
        for j in range(layout.layers):
            table[f"input_blocks.{block}.0"] = Target(f"down_blocks.{level}.resnets.{j}", UNET_RES)
            if layout.attention[level]:
                table[f"input_blocks.{block}.1"] = Target(
                    f"down_blocks.{level}.attentions.{j}",
                    UNET_ATTN,
                    layout.heads[layout.widths[level]],
                )
            block += 1
        if level < levels - 1:
            _resampler(
                table,
                f"input_blocks.{block}.0",
                "op",
                f"down_blocks.{level}.downsamplers.0",
                layout.resblock_updown,
            )
            block += 1
    table["middle_block.0"] = Target("mid_block.resnets.0", UNET_RES)
    table["middle_block.1"] = Target(
        "mid_block.attentions.0", UNET_ATTN, layout.heads[layout.widths[-1]]
    )
    table["middle_block.2"] = Target("mid_block.resnets.1", UNET_RES)
    block = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(layout.layers + 1):
            table[f"output_blocks.{block}.0"] = Target(f"up_blocks.{up}.resnets.{j}", UNET_RES)
            index = 1
            if layout.attention[level]:
                table[f"output_blocks.{block}.1"] = Target(
                    f"up_blocks.{up}.attentions.{j}", UNET_ATTN, layout.heads[layout.widths[level]]
                )
                index = 2
            if level > 0 and j == layout.layers:
                _resampler(
                    table,
                    f"output_blocks.{block}.{index}",
                    "conv",
                    f"up_blocks.{up}.upsamplers.0",
                    layout.resblock_updown,
                )
            block += 1
    return table


def _resampler(table: dict, compvis: str, conv: str, diffusers: str, resblock: bool):
    """A down/upsampler: a ResBlock (``resblock_updown``) or a conv named ``conv`` inside it."""
    if resblock:
        table[compvis] = Target(diffusers, UNET_RES)
    else:
        table[f"{compvis}.{conv}"] = Target(f"{diffusers}.conv", SAME)


def vq_modules(layout: VQLayout) -> dict[str, Target]:
    """CompVis first-stage module names (below ``first_stage_model.``) -> diffusers VQModel
    modules."""
    table = {
        name: Target(name, SAME)
        for name in (
            "quant_conv",
            "post_quant_conv",
            "quantize.embedding",
            "encoder.conv_in",
            "encoder.conv_out",
            "decoder.conv_in",
            "decoder.conv_out",
        )
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.norm_out"] = Target(f"{part}.conv_norm_out", SAME)
        table[f"{part}.mid.block_1"] = Target(f"{part}.mid_block.resnets.0", VQ_RES)
        table[f"{part}.mid.block_2"] = Target(f"{part}.mid_block.resnets.1", VQ_RES)
        if layout.mid_attention:
            table[f"{part}.mid.attn_1"] = Target(f"{part}.mid_block.attentions.0", VQ_ATTN)
    for level in range(layout.levels):
        for j in range(layout.layers):
            table[f"encoder.down.{level}.block.{j}"] = Target(
                f"encoder.down_blocks.{level}.resnets.{j}", VQ_RES
            )
        if level < layout.levels - 1:
            table[f"encoder.down.{level}.downsample.conv"] = Target(
                f"encoder.down_blocks.{level}.downsamplers.0.conv", SAME
            )
        up = layout.levels - 1 - level  # diffusers counts decoder levels from the lowest resolution
        for j in range(layout.layers + 1):
            table[f"decoder.up.{level}.block.{j}"] = Target(
                f"decoder.up_blocks.{up}.resnets.{j}", VQ_RES
            )
        if level > 0:
            table[f"decoder.up.{level}.upsample.conv"] = Target(
                f"decoder.up_blocks.{up}.upsamplers.0.conv", SAME
            )
    return table


def map_state_dict(
    weights: dict, table: dict[str, Target], new_attention_order: bool, where: str
) -> tuple[dict, dict, list[str]]:
    """(diffusers weights, diffusers key -> CompVis key, CompVis keys nothing maps).
    ``weights`` holds CompVis names without the component prefix; ``where`` is that prefix."""
    converted, sources, unmapped = {}, {}, []
    for key, tensor in weights.items():
        found = _find_module(key, table)
        if found is None:
            unmapped.append(where + key)
            continue
        module, target = found
        rest = key[len(module) + 1 :]
        sub, _, param = rest.rpartition(".")
        name = SUFFIXES[target.kind].get(sub)
        if name is None or param not in ("weight", "bias"):
            unmapped.append(where + key)
            continue
        for new_key, value in _convert_tensor(
            target, name, param, tensor, new_attention_order, where + key
        ):
            converted[new_key] = value
            sources[new_key] = where + key
    return converted, sources, unmapped


def _find_module(key: str, table: dict[str, Target]):
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest module name first
        module = ".".join(parts[:cut])
        if module in table:
            return module, table[module]
    return None


def _convert_tensor(target: Target, name: str, param: str, tensor, new_order: bool, source: str):
    """[(diffusers key, tensor)] for one CompVis parameter."""
    base = f"{target.prefix}.{name}" if name else target.prefix
    if target.kind == UNET_ATTN and name == "to_q|to_k|to_v":
        q, k, v = _split_qkv(tensor, target.heads, new_order, source)
        return [
            (f"{target.prefix}.{n}.{param}", t) for n, t in zip(("to_q", "to_k", "to_v"), (q, k, v))
        ]
    if target.kind in (UNET_ATTN, VQ_ATTN) and name != "group_norm" and param == "weight":
        tensor = _squeeze_1x1(tensor, source)  # 1-D / 1x1 convs -> Linear
    return [(f"{base}.{param}", tensor)]


def _split_qkv(tensor, heads: int, new_order: bool, source: str):
    """CompVis' fused qkv conv1d -> q, k, v (heads kept in their order)."""
    if tensor.dim() == 3:
        tensor = _squeeze_1x1(tensor, source)
    width = tensor.shape[0] // 3
    if tensor.shape[0] != 3 * width or width % heads:
        raise ModelError(
            f"{source}: shape {tuple(tensor.shape)}; expected 3 x width rows with "
            f"width a multiple of {heads} heads"
        )
    rest = tuple(tensor.shape[1:])
    if new_order:  # QKVAttention: q | k | v, each (heads, head dim)
        q, k, v = tensor.reshape(3, width, *rest).unbind(0)
    else:  # QKVAttentionLegacy: per head, q | k | v
        parts = tensor.reshape(heads, 3, width // heads, *rest)
        q, k, v = (parts[:, i].reshape(width, *rest) for i in range(3))
    return q.contiguous(), k.contiguous(), v.contiguous()


def _squeeze_1x1(tensor, source: str):
    if tensor.dim() == 3 and tensor.shape[2] == 1:
        return tensor[:, :, 0]
    if tensor.dim() == 4 and tensor.shape[2:] == (1, 1):
        return tensor[:, :, 0, 0]
    raise ModelError(f"{source}: shape {tuple(tensor.shape)}; expected a 1x1 convolution weight")
