"""``tiler convert``: tiny CompVis checkpoints -> tiler model folders, checked against the CompVis
model.

The checkpoints are built here in CompVis' key layout, from literal CompVis names (no CompVis code
is a dependency): ``compvis_keys`` lists every (name, shape) of a LatentDiffusion state_dict, and
``CompVisReference`` runs CompVis' forward passes (openaimodel.UNetModel, the taming
Encoder/Decoder, VectorQuantizer2) on those names with torch.nn.functional. Both were checked
against the real CompVis modules (latent-diffusion, taming-transformers) with these configs: same
key set and shapes (the recorded LAYOUT digests below), same outputs to float rounding. The
converted diffusers modules must then reproduce the reference; a mapping bug cannot cancel out, as
nothing here inverts the converter.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from tiler.cli.convert import convert_command
from tiler.ldm.card import read_card
from tiler.ldm.loading import load_ldm_model

# --- tiny CompVis configs (config.yaml as CompVis writes it) ------------------------------------
INPAINT_CONFIG = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.0015,
            "linear_end": 0.0205,
            "timesteps": 1000,
            "first_stage_key": "image",
            "cond_stage_key": "masked_image",
            "image_size": 16,
            "channels": 3,
            "concat_mode": True,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 16,
                    "in_channels": 7,
                    "out_channels": 3,
                    "model_channels": 32,
                    "attention_resolutions": [4, 2],
                    "num_res_blocks": 1,
                    "channel_mult": [1, 2, 3],
                    "num_heads": 2,
                    "resblock_updown": True,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.VQModelInterface",
                "params": {
                    "embed_dim": 3,
                    "n_embed": 16,
                    "ddconfig": {
                        "attn_type": "none",
                        "double_z": False,
                        "z_channels": 3,
                        "resolution": 32,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 2],
                        "num_res_blocks": 1,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                    "lossconfig": {"target": "torch.nn.Identity"},
                },
            },
            "cond_stage_config": "__is_first_stage__",
        },
    }
}

SYNTHESIS_CONFIG = copy.deepcopy(INPAINT_CONFIG)
_params = SYNTHESIS_CONFIG["model"]["params"]
_params.update(
    cond_stage_key="segmentation",
    cond_stage_trainable=True,
    cond_stage_config={
        "target": "ldm.modules.encoders.modules.SpatialRescaler",
        "params": {"n_stages": 1, "in_channels": 6, "out_channels": 3},
    },
)  # f = 2: one x0.5
_params["unet_config"]["params"] = {
    "image_size": 16,
    "in_channels": 6,
    "out_channels": 3,
    "model_channels": 32,
    "attention_resolutions": [32, 16, 8],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 32,
    "use_scale_shift_norm": True,
}
del _params["first_stage_config"]["params"]["ddconfig"]["attn_type"]  # vanilla: mid attention

# The real CompVis LatentDiffusion built from these configs has exactly this state_dict layout:
# (key count, sha256 of the sorted "key [shape]" lines).
LAYOUT = {
    "inpaint": (660, "99f76bcf67441ea6de68bae11917a6f99fcfee6aa32c6c619b92e37ff8bbb7fc"),
    "synthesis": (360, "73011ff8b00b258ed76988dcee2fb75afaeb3da7efb122ef4a66d58da7d5e6f6"),
}
SCHEDULE_BUFFERS = (
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
)


def params_of(config) -> dict:
    return config["model"]["params"]


# --- the CompVis key layout, from literal CompVis names ------------------------------------------
class KeyList(dict):
    """name -> shape, filled by CompVis' module kinds."""

    def conv(self, name, cin, cout, k):
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def conv1d(self, name, cin, cout):
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin, 1), (cout,)

    def linear(self, name, cin, cout):
        self[f"{name}.weight"], self[f"{name}.bias"] = (cout, cin), (cout,)

    def norm(self, name, ch):
        self[f"{name}.weight"], self[f"{name}.bias"] = (ch,), (ch,)


def unet_keys(p: dict) -> KeyList:
    """openaimodel.UNetModel: ResBlock in_layers.{0,2} emb_layers.1 out_layers.{0,3}
    [skip_connection], AttentionBlock norm qkv proj_out, in TimestepEmbedSequential blocks."""
    keys, mc, emb = KeyList(), p["model_channels"], 4 * p["model_channels"]
    shift = 2 if p.get("use_scale_shift_norm") else 1
    updown = p.get("resblock_updown", False)
    widths = [mc * m for m in p["channel_mult"]]
    attention = [2**level in p["attention_resolutions"] for level in range(len(widths))]

    def res(name, cin, cout):
        keys.norm(f"{name}.in_layers.0", cin)
        keys.conv(f"{name}.in_layers.2", cin, cout, 3)
        keys.linear(f"{name}.emb_layers.1", emb, shift * cout)
        keys.norm(f"{name}.out_layers.0", cout)
        keys.conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            keys.conv(f"{name}.skip_connection", cin, cout, 1)

    def attn(name, ch):
        keys.norm(f"{name}.norm", ch)
        keys.conv1d(f"{name}.qkv", ch, 3 * ch)
        keys.conv1d(f"{name}.proj_out", ch, ch)

    keys.linear("time_embed.0", mc, emb)
    keys.linear("time_embed.2", emb, emb)
    keys.conv("input_blocks.0.0", p["in_channels"], mc, 3)
    skips, ch, block = [mc], mc, 1
    for level, width in enumerate(widths):
        for _ in range(p["num_res_blocks"]):
            res(f"input_blocks.{block}.0", ch, width)
            ch = width
            if attention[level]:
                attn(f"input_blocks.{block}.1", ch)
            skips.append(ch)
            block += 1
        if level < len(widths) - 1:
            if updown:
                res(f"input_blocks.{block}.0", ch, ch)
            else:
                keys.conv(f"input_blocks.{block}.0.op", ch, ch, 3)
            skips.append(ch)
            block += 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    block = 0
    for level in reversed(range(len(widths))):
        for i in range(p["num_res_blocks"] + 1):
            res(f"output_blocks.{block}.0", ch + skips.pop(), widths[level])
            ch, index = widths[level], 1
            if attention[level]:
                attn(f"output_blocks.{block}.1", ch)
                index = 2
            if level and i == p["num_res_blocks"]:
                if updown:
                    res(f"output_blocks.{block}.{index}", ch, ch)
                else:
                    keys.conv(f"output_blocks.{block}.{index}.conv", ch, ch, 3)
            block += 1
    keys.norm("out.0", ch)
    keys.conv("out.2", mc, p["out_channels"], 3)
    return keys


def first_stage_keys(p: dict) -> KeyList:
    """VQModelInterface: taming Encoder/Decoder (down.L.block.J, mid.block_1/attn_1/block_2,
    up.L.block.J, ResnetBlock norm1 conv1 norm2 conv2 [nin_shortcut], AttnBlock norm q k v
    proj_out), quant_conv, post_quant_conv, quantize.embedding."""
    keys, dd = KeyList(), p["ddconfig"]
    widths = [dd["ch"] * m for m in dd["ch_mult"]]
    mid_attention = dd.get("attn_type", "vanilla") == "vanilla"

    def res(name, cin, cout):
        keys.norm(f"{name}.norm1", cin)
        keys.conv(f"{name}.conv1", cin, cout, 3)
        keys.norm(f"{name}.norm2", cout)
        keys.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            keys.conv(f"{name}.nin_shortcut", cin, cout, 1)

    def middle(part, ch):
        res(f"{part}.mid.block_1", ch, ch)
        if mid_attention:
            keys.norm(f"{part}.mid.attn_1.norm", ch)
            for conv in ("q", "k", "v", "proj_out"):
                keys.conv(f"{part}.mid.attn_1.{conv}", ch, ch, 1)
        res(f"{part}.mid.block_2", ch, ch)

    keys.conv("encoder.conv_in", dd["in_channels"], dd["ch"], 3)
    ch = dd["ch"]
    for level, width in enumerate(widths):
        for j in range(dd["num_res_blocks"]):
            res(f"encoder.down.{level}.block.{j}", ch, width)
            ch = width
        if level < len(widths) - 1:
            keys.conv(f"encoder.down.{level}.downsample.conv", ch, ch, 3)
    middle("encoder", ch)
    keys.norm("encoder.norm_out", ch)
    keys.conv("encoder.conv_out", ch, dd["z_channels"], 3)
    keys.conv("decoder.conv_in", dd["z_channels"], ch, 3)
    middle("decoder", ch)
    for level in reversed(range(len(widths))):
        for j in range(dd["num_res_blocks"] + 1):
            res(f"decoder.up.{level}.block.{j}", ch, widths[level])
            ch = widths[level]
        if level:
            keys.conv(f"decoder.up.{level}.upsample.conv", ch, ch, 3)
    keys.norm("decoder.norm_out", ch)
    keys.conv("decoder.conv_out", ch, dd["out_ch"], 3)
    keys.conv("quant_conv", dd["z_channels"], p["embed_dim"], 1)
    keys.conv("post_quant_conv", p["embed_dim"], dd["z_channels"], 1)
    keys["quantize.embedding.weight"] = (p["n_embed"], p["embed_dim"])
    return keys


def compvis_keys(config) -> dict[str, tuple]:
    """Every key of the LatentDiffusion state_dict with its shape."""
    params = params_of(config)
    unet = unet_keys(params["unet_config"]["params"])
    first = first_stage_keys(params["first_stage_config"]["params"])
    keys = {f"model.diffusion_model.{k}": s for k, s in unet.items()}
    # LitEma: one buffer per UNet parameter, named without dots, plus its bookkeeping
    keys.update(
        {"model_ema." + f"diffusion_model.{k}".replace(".", ""): s for k, s in unet.items()}
    )
    keys.update({"model_ema.decay": (), "model_ema.num_updates": ()})
    keys.update({f"first_stage_model.{k}": s for k, s in first.items()})
    if params["cond_stage_config"] == "__is_first_stage__":  # the same module, registered twice
        keys.update({f"cond_stage_model.{k}": s for k, s in first.items()})
    else:
        rescaler = params["cond_stage_config"]["params"]
        keys["cond_stage_model.channel_mapper.weight"] = (
            rescaler["out_channels"],
            rescaler["in_channels"],
            1,
            1,
        )
    keys.update({name: (params["timesteps"],) for name in SCHEDULE_BUFFERS})
    return keys


def layout_digest(keys) -> str:
    lines = sorted(f"{key} {list(shape)}" for key, shape in keys.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def make_checkpoint(config, seed: int) -> dict:
    """A random CompVis state_dict for ``config``: trained and EMA weights differ; the inpainting
    cond stage shares the first stage's tensors; the schedule buffers follow the config."""
    params = params_of(config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in compvis_keys(config).items():
        if key.startswith("cond_stage_model.") and "channel_mapper" not in key:
            continue
        if len(shape) > 1:  # conv / linear / codebook
            state[key] = torch.randn(shape, generator=generator) / math.prod(shape[1:]) ** 0.5
        elif key.endswith(".weight"):  # 1-D weights are group norms
            state[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if params["cond_stage_config"] == "__is_first_stage__":
        state.update(
            {
                "cond_stage_model." + k[len("first_stage_model.") :]: v
                for k, v in state.items()
                if k.startswith("first_stage_model.")
            }
        )
    betas = (
        np.linspace(
            params["linear_start"] ** 0.5,
            params["linear_end"] ** 0.5,
            params["timesteps"],
            dtype=np.float64,
        )
        ** 2
    )
    state["betas"] = torch.tensor(betas, dtype=torch.float32)
    return state


def ema_weights(state) -> dict:
    """The UNet weights CompVis samples with (ema_scope): model_ema.* under UNet names."""
    prefix = "model.diffusion_model."
    return {
        k: state["model_ema." + ("diffusion_model." + k[len(prefix) :]).replace(".", "")]
        for k in state
        if k.startswith(prefix)
    }


# --- CompVis' forward passes on CompVis names ----------------------------------------------------
class CompVisReference:
    """openaimodel.UNetModel and VQModelInterface forward passes, functional, on a state_dict."""

    def __init__(self, config, state, unet_weights=None):
        self.params = params_of(config)
        self.unet = self.params["unet_config"]["params"]
        self.first = self.params["first_stage_config"]["params"]
        self.sd = dict(state)
        self.sd.update(unet_weights or {})

    # shared layers
    def conv(self, x, name, stride=1, padding=0):
        return F.conv2d(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], stride, padding)

    def norm(self, x, name, eps):  # GroupNorm32 / Normalize: 32 groups
        return F.group_norm(x, 32, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], eps)

    def linear(self, x, name):
        return F.linear(x, self.sd[f"{name}.weight"], self.sd[f"{name}.bias"])

    # the UNet
    def res_block(self, x, emb, name, resample=None):
        h = F.silu(self.norm(x, f"{name}.in_layers.0", 1e-5))
        if resample == "down":
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif resample == "up":
            h, x = F.interpolate(h, scale_factor=2.0), F.interpolate(x, scale_factor=2.0)
        h = self.conv(h, f"{name}.in_layers.2", padding=1)
        e = self.linear(F.silu(emb), f"{name}.emb_layers.1")[:, :, None, None]
        if self.unet.get("use_scale_shift_norm"):
            scale, shift = e.chunk(2, dim=1)
            h = self.norm(h, f"{name}.out_layers.0", 1e-5) * (1 + scale) + shift
        else:
            h = self.norm(h + e, f"{name}.out_layers.0", 1e-5)
        h = self.conv(F.silu(h), f"{name}.out_layers.3", padding=1)
        skip = (
            self.conv(x, f"{name}.skip_connection")
            if f"{name}.skip_connection.weight" in self.sd
            else x
        )
        return skip + h

    def attention_block(self, x, name):
        b, c, height, width = x.shape
        heads = (
            c // self.unet["num_head_channels"]
            if self.unet.get("num_head_channels", -1) != -1
            else self.unet["num_heads"]
        )
        t = x.reshape(b, c, -1)
        normed = F.group_norm(
            t, 32, self.sd[f"{name}.norm.weight"], self.sd[f"{name}.norm.bias"], 1e-5
        )
        qkv = F.conv1d(normed, self.sd[f"{name}.qkv.weight"], self.sd[f"{name}.qkv.bias"])
        d = c // heads  # QKVAttentionLegacy: heads first, then q | k | v
        q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        out = F.conv1d(a, self.sd[f"{name}.proj_out.weight"], self.sd[f"{name}.proj_out.bias"])
        return (t + out).reshape(b, c, height, width)

    def unet_forward(self, x, t: int):
        p, pre = self.unet, "model.diffusion_model."
        half = p["model_channels"] // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = torch.tensor([float(t)])[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        emb = self.linear(F.silu(self.linear(emb, pre + "time_embed.0")), pre + "time_embed.2")
        levels = len(p["channel_mult"])
        attention = [2**level in p["attention_resolutions"] for level in range(levels)]
        updown = p.get("resblock_updown", False)
        h = self.conv(x, pre + "input_blocks.0.0", padding=1)
        skips, block = [h], 1
        for level in range(levels):
            for _ in range(p["num_res_blocks"]):
                h = self.res_block(h, emb, f"{pre}input_blocks.{block}.0")
                if attention[level]:
                    h = self.attention_block(h, f"{pre}input_blocks.{block}.1")
                skips.append(h)
                block += 1
            if level < levels - 1:
                h = (
                    self.res_block(h, emb, f"{pre}input_blocks.{block}.0", "down")
                    if updown
                    else self.conv(h, f"{pre}input_blocks.{block}.0.op", stride=2, padding=1)
                )
                skips.append(h)
                block += 1
        h = self.res_block(h, emb, pre + "middle_block.0")
        h = self.attention_block(h, pre + "middle_block.1")
        h = self.res_block(h, emb, pre + "middle_block.2")
        block = 0
        for level in reversed(range(levels)):
            for i in range(p["num_res_blocks"] + 1):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self.res_block(h, emb, f"{pre}output_blocks.{block}.0")
                index = 1
                if attention[level]:
                    h = self.attention_block(h, f"{pre}output_blocks.{block}.1")
                    index = 2
                if level and i == p["num_res_blocks"]:
                    name = f"{pre}output_blocks.{block}.{index}"
                    h = (
                        self.res_block(h, emb, name, "up")
                        if updown
                        else self.conv(
                            F.interpolate(h, scale_factor=2.0), name + ".conv", padding=1
                        )
                    )
                block += 1
        return self.conv(F.silu(self.norm(h, pre + "out.0", 1e-5)), pre + "out.2", padding=1)

    # the first stage
    def vq_res(self, x, name):
        h = self.conv(F.silu(self.norm(x, f"{name}.norm1", 1e-6)), f"{name}.conv1", padding=1)
        h = self.conv(F.silu(self.norm(h, f"{name}.norm2", 1e-6)), f"{name}.conv2", padding=1)
        skip = (
            self.conv(x, f"{name}.nin_shortcut") if f"{name}.nin_shortcut.weight" in self.sd else x
        )
        return skip + h

    def vq_attention(self, x, name):
        b, c, height, width = x.shape
        h = self.norm(x, f"{name}.norm", 1e-6)
        q, k, v = (self.conv(h, f"{name}.{n}").reshape(b, c, -1) for n in ("q", "k", "v"))
        weight = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)
        h = torch.bmm(v, weight.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.conv(h, f"{name}.proj_out")

    def middle(self, h, part):
        h = self.vq_res(h, f"{part}.mid.block_1")
        if self.first["ddconfig"].get("attn_type", "vanilla") == "vanilla":
            h = self.vq_attention(h, f"{part}.mid.attn_1")
        return self.vq_res(h, f"{part}.mid.block_2")

    def encode(self, image):
        dd, e = self.first["ddconfig"], "first_stage_model.encoder"
        h = self.conv(image, f"{e}.conv_in", padding=1)
        for level in range(len(dd["ch_mult"])):
            for j in range(dd["num_res_blocks"]):
                h = self.vq_res(h, f"{e}.down.{level}.block.{j}")
            if level < len(dd["ch_mult"]) - 1:  # asymmetric padding, then a stride-2 conv
                h = self.conv(F.pad(h, (0, 1, 0, 1)), f"{e}.down.{level}.downsample.conv", stride=2)
        h = self.middle(h, e)
        h = self.conv(F.silu(self.norm(h, f"{e}.norm_out", 1e-6)), f"{e}.conv_out", padding=1)
        return self.conv(h, "first_stage_model.quant_conv")

    def decode(self, z, quantize: bool):
        dd, d = self.first["ddconfig"], "first_stage_model.decoder"
        if quantize:  # VectorQuantizer2: the nearest codebook entry
            codebook = self.sd["first_stage_model.quantize.embedding.weight"]
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            index = torch.cdist(flat, codebook).argmin(dim=1)
            z = codebook[index].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        h = self.conv(self.conv(z, "first_stage_model.post_quant_conv"), f"{d}.conv_in", padding=1)
        h = self.middle(h, d)
        for level in reversed(range(len(dd["ch_mult"]))):
            for j in range(dd["num_res_blocks"] + 1):
                h = self.vq_res(h, f"{d}.up.{level}.block.{j}")
            if level:
                h = self.conv(
                    F.interpolate(h, scale_factor=2.0), f"{d}.up.{level}.upsample.conv", padding=1
                )
        return self.conv(F.silu(self.norm(h, f"{d}.norm_out", 1e-6)), f"{d}.conv_out", padding=1)


# --- fixtures and helpers ------------------------------------------------------------------------
def write_checkpoint(folder, config, state, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 1, **extra}, folder / "model.ckpt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "model.ckpt"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("compvis")
    made = {}
    for task, config, seed in (("inpaint", INPAINT_CONFIG, 0), ("synthesis", SYNTHESIS_CONFIG, 1)):
        state = make_checkpoint(config, seed)
        made[task] = (write_checkpoint(root / task, config, state), config, state)
    return made


def convert(*args):
    return CliRunner().invoke(convert_command, [str(a) for a in args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("tiler: error: "), result.output
    return lines[0]


def close(a, b, atol=1e-5):
    diff = float((a - b).abs().max())
    assert diff < atol, f"max |diff| {diff}"
    return diff


# --- the layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,config", [("inpaint", INPAINT_CONFIG), ("synthesis", SYNTHESIS_CONFIG)]
)
def test_tiny_checkpoint_has_the_compvis_layout(task, config):
    keys = compvis_keys(config)
    assert (len(keys), layout_digest(keys)) == LAYOUT[task]


# --- conversion equals CompVis -------------------------------------------------------------------
def check_outputs(model_dir, config, state, unet_weights):
    reference = CompVisReference(config, state, unet_weights)
    model = load_ldm_model(model_dir, device="cpu")
    unet = model.unet  # loading restores CompVis' fixed heads (recorded in unet/config.json)
    generator = torch.Generator().manual_seed(7)
    channels = params_of(config)["unet_config"]["params"]["in_channels"]
    x = torch.randn(1, channels, 16, 16, generator=generator)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        for t in (1, 981):
            close(unet(x, torch.tensor([t])).sample, reference.unet_forward(x, t))
        latent = model.vqvae.encode(image).latents
        close(latent, reference.encode(image))
        unquantized = model.vqvae.decode(latent, force_not_quantize=True).sample
        close(unquantized, reference.decode(latent, False))
        close(model.vqvae.decode(latent).sample, reference.decode(latent, True))


def test_inpainting_checkpoint_converts_to_the_same_model(checkpoints, tmp_path):
    ckpt, config, state = checkpoints["inpaint"]
    result = convert(ckpt, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tiler: converted {ckpt} (inpaint) into {tmp_path / 'out'}"
    card = read_card(tmp_path / "out")
    # a generic checkpoint name (model.ckpt, last.ckpt) names the model after its folder
    assert (card.task, card.name, card.first_stage, card.scale) == (
        "inpaint",
        "inpaint",
        "vqvae",
        1,
    )
    assert card.conditioning.kind == "masked-image-and-mask" and "EMA" in card.source
    unet_config = yaml.safe_load((tmp_path / "out" / "unet" / "config.json").read_text())
    assert unet_config["_tiler_attention_heads"] == 2  # widths 64 and 96, 2 heads each
    scheduler = yaml.safe_load(
        (tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text()
    )
    assert (
        scheduler["beta_schedule"],
        scheduler["beta_start"],
        scheduler["beta_end"],
        scheduler["steps_offset"],
        scheduler["set_alpha_to_one"],
    ) == ("scaled_linear", 0.0015, 0.0205, 1, False)
    check_outputs(tmp_path / "out", config, state, ema_weights(state))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_synthesis_checkpoint_converts_to_the_same_model(checkpoints, tmp_path):
    from safetensors.torch import load_file

    ckpt, config, state = checkpoints["synthesis"]
    result = convert(ckpt, tmp_path / "out", "--no-ema", "-q")
    assert result.exit_code == 0 and result.output == "", result.output
    card = read_card(tmp_path / "out")
    assert card.task == "synthesis" and "trained weights" in card.source
    assert card.conditioning.model_dump(by_alias=True) == {
        "kind": "labels",
        "classes": 6,
        "out-channels": 3,
        "rescale-stages": 1,
        "multiplier": 0.5,
        "method": "bilinear",
    }
    rescaler = load_file(str(tmp_path / "out" / "cond_stage" / "label_rescaler.safetensors"))
    assert torch.equal(
        rescaler["channel_mapper.weight"], state["cond_stage_model.channel_mapper.weight"]
    )
    check_outputs(tmp_path / "out", config, state, unet_weights=None)  # --no-ema: trained weights


# --- refusals ------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this would call os.system: a weights-only load must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.marker}",))


def test_a_checkpoint_needing_arbitrary_unpickling_is_refused(checkpoints, tmp_path):
    _, config, state = checkpoints["synthesis"]
    marker = tmp_path / "ran"
    ckpt = write_checkpoint(tmp_path / "evil", config, {"a": torch.zeros(1)}, hook=RunsCode(marker))
    result = convert(ckpt, tmp_path / "out")
    assert result.exit_code == 1
    line = error_line(result)
    assert str(ckpt) in line and "needs arbitrary unpickling" in line and "refused" in line
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_lightning_callback_class_of_real_checkpoints_is_read_as_a_placeholder(
    checkpoints, tmp_path, monkeypatch
):
    _, config, state = checkpoints["synthesis"]
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:  # what Lightning pickles as the key of its callback state
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    packages = ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__)
    for name in packages:  # importable while pickling, gone when converting
        stand_in = module if name == module.__name__ else types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, stand_in)
    ckpt = write_checkpoint(
        tmp_path / "pl",
        config,
        state,
        callbacks={ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
    )
    for name in packages:
        monkeypatch.delitem(sys.modules, name)
    result = convert(ckpt, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output


def test_an_existing_out_dir_is_refused_without_overwrite(checkpoints, tmp_path):
    ckpt, _, _ = checkpoints["synthesis"]
    assert convert(ckpt, tmp_path / "out", "-q").exit_code == 0
    before = (tmp_path / "out" / "tiler.yaml").stat().st_mtime_ns
    result = convert(ckpt, tmp_path / "out")
    assert result.exit_code == 1
    assert "exists; pass --overwrite" in error_line(result)
    assert (tmp_path / "out" / "tiler.yaml").stat().st_mtime_ns == before
    assert convert(ckpt, tmp_path / "out", "--overwrite", "-q").exit_code == 0
    read_card(tmp_path / "out")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = convert(ckpt, tmp_path / "notes", "--overwrite")
    assert "without tiler.yaml" in error_line(result)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out"]


def altered(checkpoints, tmp_path, task="inpaint", drop=(), add=None, config_change=None):
    _, config, state = checkpoints[task]
    state = {k: v for k, v in state.items() if k not in drop} | (add or {})
    config = copy.deepcopy(config)
    if config_change:
        config_change(params_of(config))
    return write_checkpoint(tmp_path / "altered", config, state)


@pytest.mark.parametrize(
    "drop,named",
    [
        ("first_stage_model.decoder.up.1.block.0.conv1.weight", "missing key(s) {}"),
        ("model_ema.diffusion_modelinput_blocks31qkvweight", "model_ema.*: missing {}"),
    ],
)
def test_a_missing_key_is_named(checkpoints, tmp_path, drop, named):
    named = named.format(drop)
    ckpt = altered(checkpoints, tmp_path, drop=[drop])
    line = error_line(convert(ckpt, tmp_path / "out"))
    assert str(ckpt) in line and named in line
    assert not (tmp_path / "out").exists()


def test_a_missing_unet_key_is_named_with_no_ema(checkpoints, tmp_path):
    key = "model.diffusion_model.output_blocks.1.2.in_layers.2.bias"  # the upsampling ResBlock
    ckpt = altered(checkpoints, tmp_path, drop=[key])
    line = error_line(convert(ckpt, tmp_path / "out", "--no-ema"))
    assert f"missing key(s) {key}" in line


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.input_blocks.1.0.extra.weight",
        "first_stage_model.encoder.down.0.attn.0.q.weight",
        "training_state",
    ],
)
def test_an_unexpected_key_is_named(checkpoints, tmp_path, key):
    ckpt = altered(checkpoints, tmp_path, add={key: torch.zeros(2)}, task="synthesis")
    line = error_line(convert(ckpt, tmp_path / "out", "--no-ema"))
    assert f"unexpected key(s) {key}" in line


def test_a_wrong_shape_is_named(checkpoints, tmp_path):
    key = "first_stage_model.quantize.embedding.weight"
    ckpt = altered(checkpoints, tmp_path, add={key: torch.zeros(8, 3)})
    line = error_line(convert(ckpt, tmp_path / "out"))
    assert f"{key}: shape (8, 3) does not fit quantize.embedding.weight (16, 3)" in line


@pytest.mark.parametrize(
    "change,named",
    [
        (
            lambda p: p.update(cond_stage_key="caption"),
            "model.params.cond_stage_key: 'caption'; expected masked_image",
        ),
        (lambda p: p.update(linear_end=0.012), "betas (1000 steps"),
        (
            lambda p: p["unet_config"]["params"].update(use_spatial_transformer=True),
            "model.params.unet_config.params.use_spatial_transformer: True; expected false",
        ),
        (
            lambda p: p["first_stage_config"]["params"].update(embed_dim=4),
            "model.params.first_stage_config.params.embed_dim: 4; expected 3",
        ),
        (
            lambda p: p["first_stage_config"].update(target="ldm.models.autoencoder.AutoencoderKL"),
            "model.params.first_stage_config.target: "
            "'ldm.models.autoencoder.AutoencoderKL'; expected",
        ),
    ],
)
def test_an_unsupported_config_is_named(checkpoints, tmp_path, change, named):
    ckpt = altered(checkpoints, tmp_path, config_change=change)
    line = error_line(convert(ckpt, tmp_path / "out"))
    assert named in line and ("config.yaml" in line or str(ckpt) in line)


def test_a_missing_config_is_named(checkpoints, tmp_path):
    ckpt, _, _ = checkpoints["synthesis"]
    line = error_line(convert(ckpt, tmp_path / "out", "--config", tmp_path / "none.yaml"))
    assert f"{tmp_path / 'none.yaml'}: missing" in line


def test_converted_models_run_in_tiler(checkpoints, tmp_path):
    """The converted folders are what `tiler inpaint` and `tiler synthesize` take."""
    from conftest import make_raster, read_raster, run_tiler

    grid = (
        "--tile",
        "8",
        "--overlap",
        "2",
        "--region",
        "8",
        "--halo",
        "2",
        "--steps",
        "2",
        "--decode-tile",
        "8",
        "--decode-halo",
        "4",
        "--device",
        "cpu",
    )
    for task in ("inpaint", "synthesis"):
        assert convert(checkpoints[task][0], tmp_path / task).exit_code == 0
    image = make_raster(tmp_path / "image.tif", width=40, height=36)
    mask = np.zeros((1, 36, 40), dtype="uint8")
    mask[0, 10:20, 12:30] = 1
    make_raster(tmp_path / "mask.tif", data=mask)
    filled = run_tiler(
        "inpaint",
        image,
        tmp_path / "filled.tif",
        "--model",
        tmp_path / "inpaint",
        "--mask",
        tmp_path / "mask.tif",
        *grid,
    )
    assert filled.returncode == 0, filled.stderr
    keep = mask[0] == 0
    np.testing.assert_array_equal(
        read_raster(tmp_path / "filled.tif")[0][:, keep], read_raster(image)[0][:, keep]
    )
    labels = make_raster(
        tmp_path / "labels.tif",
        data=(np.arange(36 * 40).reshape(1, 36, 40) // 97 % 6).astype("uint8"),
    )
    synthesized = run_tiler(
        "synthesize", labels, tmp_path / "synth.tif", "--model", tmp_path / "synthesis", *grid
    )
    assert synthesized.returncode == 0, synthesized.stderr
    assert read_raster(tmp_path / "synth.tif")[0].shape == (3, 36, 40)


def test_a_label_rescaler_not_matching_the_first_stage_is_named(checkpoints, tmp_path):
    config = copy.deepcopy(SYNTHESIS_CONFIG)
    config["model"]["params"]["cond_stage_config"]["params"]["n_stages"] = 2  # 1/4, latent is 1/2
    ckpt = write_checkpoint(tmp_path / "bad", config, checkpoints["synthesis"][2])
    result = convert(ckpt, tmp_path / "out")
    assert result.exit_code == 1
    assert "cond_stage_config.params.n_stages: 2; expected stages of x0.5" in error_line(result)
    assert not (tmp_path / "out").exists()
