#!/usr/bin/env python
"""The Stable Diffusion x4 upscaler on tiler's engine against diffusers' own
StableDiffusionUpscalePipeline, on the real architecture (benchmarks/configs/sd-x4-upscaler.json)
with random weights: the compute cost is the real one, the weights cannot be downloaded here. Both
run with classifier-free guidance (scale 9, two UNet passes per step); output MP/s per step count.
The tokenizer is a byte-level stand-in with CLIP's 77-token limit (its vocabulary is not on this
machine); it costs nothing next to the UNet.

    python benchmarks/sd_upscaler.py --device cuda --size 512 --steps 20 75     # on a GPU
    python benchmarks/sd_upscaler.py --device cpu --size 32 --steps 2 5         # small, on a CPU

tiler runs the whole raster (tiles of --tile latent px = low-res px, overlap 16 where it tiles,
back-projection off, as the stock pipeline has none); the stock pipeline runs on one --size tile.
Model loading is left out of both timings (tiler's model stays loaded between runs in a process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PROMPT = "a sharp aerial photograph of fields, roads and houses"


def build_model(folder: Path, seed: int = 0) -> Path:
    """The real x4 upscaler's components with random weights, saved by diffusers."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
        StableDiffusionUpscalePipeline,
    )
    from tiny_models import save_tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    config = json.loads((REPO / "benchmarks" / "configs" / "sd-x4-upscaler.json").read_text())

    def strip(section: dict) -> dict:
        return {k: v for k, v in section.items() if not k.startswith("_")}

    torch.manual_seed(seed)
    text = {k: v for k, v in config["text_encoder"].items() if k not in ("architectures",)}
    tokenizer = CLIPTokenizer.from_pretrained(
        str(save_tiny_tokenizer(folder / "tokenizer", limit=text["max_position_embeddings"]))
    )
    pipeline = StableDiffusionUpscalePipeline(
        vae=AutoencoderKL(**strip(config["vae"])),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**strip(config["unet"])),
        low_res_scheduler=DDPMScheduler(**strip(config["low_res_scheduler"])),
        scheduler=DDIMScheduler(**strip(config["scheduler"])),
        safety_checker=None,
        watermarker=None,
        max_noise_level=350,
    )
    pipeline.save_pretrained(str(folder))
    return folder


def make_input(path: Path, size: int) -> Path:
    """Imagery-like uint8 RGB: smooth structure and noise."""
    import rasterio

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rng = np.random.default_rng(0)
    bands = [
        127 + 60 * np.sin(xx / (11 + 4 * b)) * np.cos(yy / (13 + 3 * b))
        + rng.normal(0, 8, xx.shape)
        for b in range(3)
    ]  # fmt: skip
    data = np.clip(np.stack(bands), 0, 255).astype("uint8")
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8"
    ) as dst:
        dst.write(data)
    return path


def tiler_seconds(model: Path, source: Path, out: Path, args, steps: int) -> float:
    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.tasks import plan_upscale

    tile = min(args.tile, args.size)
    plan = plan_upscale(
        source,
        out,
        model=str(model),
        tile=tile,
        overlap=0 if tile >= args.size else 16,
        region=max(tile, 1024 if args.size > tile else tile),
        halo=0 if tile >= args.size else 32,
        diffusion=DiffusionOptions(
            steps=steps,
            prompt=PROMPT,
            device=args.device,
            dtype=args.dtype,
            back_project=False,
            decode_tile=min(128, args.size),
            decode_halo=0 if args.size <= 128 else 16,
        ),
    )
    start = time.perf_counter()
    run_plan(plan, runtime=RuntimeOptions(device=args.device), progress=False)
    return time.perf_counter() - start


def stock_seconds(model: Path, source: Path, args, steps: int) -> float:
    import rasterio
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
        StableDiffusionUpscalePipeline,
    )

    dtype = getattr(torch, args.dtype or "float32")
    pipeline = StableDiffusionUpscalePipeline.from_pretrained(str(model), torch_dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(args.device)
    with rasterio.open(source) as src:
        image = src.read().transpose(1, 2, 0)[None].astype(np.float32) / 255
    start = time.perf_counter()
    with torch.no_grad():
        pipeline(prompt=PROMPT, image=image, num_inference_steps=steps, output_type="np")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=32, help="input side in px (= latent px)")
    parser.add_argument("--tile", type=int, default=128, help="tiler's tile in latent px")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "x4")
        source = make_input(tmp / "in.tif", args.size)
        megapixels = (4 * args.size) ** 2 / 1e6
        print(
            f"x4 upscaler (real architecture, random weights), {args.size} px input -> "
            f"{4 * args.size} px, guidance 9, {args.device} {args.dtype or 'default dtype'}, "
            f"{args.threads} threads"
        )
        print(f"{'steps':>5} {'tiler s':>9} {'tiler MP/s':>11} {'stock s':>9} {'stock MP/s':>11}")
        tiler_seconds(model, source, tmp / "warm.tif", args, 1)  # load the model once, untimed
        for steps in args.steps:
            ours = tiler_seconds(model, source, tmp / f"out{steps}.tif", args, steps)
            stock = stock_seconds(model, source, args, steps)
            print(
                f"{steps:5d} {ours:9.1f} {megapixels / ours:11.4f} {stock:9.1f} "
                f"{megapixels / stock:11.4f}"
            )


if __name__ == "__main__":
    main()
