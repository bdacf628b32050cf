#!/usr/bin/env python
"""LDM inpainting throughput on the real CompVis architecture (benchmarks/configs/ldm-inpainting.json:
UNet 387M parameters, VQ f=4 without attention) with random weights: the compute cost is the real one.

    python benchmarks/inpaint.py --device cpu --size 256 --steps 2 --tile 32 --overlap 8 \\
        --region 64 --halo 8 --decode-tile 32 --decode-halo 8      # small CPU configuration
    python benchmarks/inpaint.py --device cuda --size 4096 --steps 50 --mask-fraction 0.05

The mask is a set of square holes covering about ``--mask-fraction`` of the raster. Prints the
masked and total megapixels per second, the tiles computed against the whole grid's, and the UNet's
model-FLOPs utilisation where the device's peak is known. With $OUT set, writes $OUT/inpaint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIG = REPO / "benchmarks" / "configs" / "ldm-inpainting.json"
UNET_GFLOP_128 = 1345.5  # per forward at a 128 x 128 latent, batch 1 (from the config's notes)
PEAK_TFLOPS = {"cuda": 989.0}  # H100 SXM dense bf16


def build_model(folder: Path, seed: int = 0) -> Path:
    """The real architecture, random weights, in tiler's model-directory format."""
    import torch
    from diffusers import UNet2DModel, VQModel
    from diffusers.schedulers import DDIMScheduler

    from tiler.model_card import ModelCard, write_card

    config = json.loads(CONFIG.read_text())
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    torch.manual_seed(seed)
    UNet2DModel(**strip(config["unet"])).save_pretrained(folder / "unet")
    VQModel(**strip(config["vqvae"])).save_pretrained(folder / "vqvae")
    DDIMScheduler(**strip(config["scheduler"])).save_pretrained(folder / "scheduler")
    write_card(folder, ModelCard.model_validate({
        "task": "inpaint", "name": "CompVis LDM inpainting (random weights)",
        "conditioning": {"kind": "masked-image-and-mask"}, "source": config["source"]}))
    return folder


def make_mask(path: Path, size: int, fraction: float, hole: int = 24):
    """Square holes of ``hole`` px on a regular grid, about ``fraction`` of the area."""
    import rasterio
    from affine import Affine

    spacing = max(hole + 1, int(round(hole / np.sqrt(fraction))))
    area = np.zeros((size, size), dtype="uint8")
    for y in range(spacing // 2, size - hole, spacing):
        for x in range(spacing // 2, size - hole, spacing):
            area[y:y + hole, x:x + hole] = 1
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4600000)) as dst:
        dst.write(area[None])
    return float(area.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=4096, help="input px (square)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mask-fraction", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=None)
    for name in ("tile", "overlap", "region", "halo", "decode-tile", "decode-halo"):
        parser.add_argument(f"--{name}", type=int, default=None, help="default: tiler's")
    args = parser.parse_args()

    import torch

    from superres_gpu import make_input
    from tiler.cluster import ExecutionOptions
    from tiler.inpaint import plan_inpaint
    from tiler.mask import MaskSpec
    from tiler.tasks.superres import DiffusionOptions, RuntimeOptions
    from tiler.upscale import run_upscale

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model = build_model(work / "model")
        build_s = time.perf_counter() - started
        source, mask = work / "input.tif", work / "mask.tif"
        make_input(source, args.size)
        fraction = make_mask(mask, args.size, args.mask_fraction)
        plan = plan_inpaint(source, work / "out.tif", model=str(model), mask=MaskSpec("file", str(mask)),
                            tile=args.tile, overlap=args.overlap, region=args.region, halo=args.halo,
                            diffusion=DiffusionOptions(steps=args.steps, device=args.device,
                                                       decode_tile=args.decode_tile,
                                                       decode_halo=args.decode_halo))
        started = time.perf_counter()
        report = run_upscale(plan, runtime=RuntimeOptions(device=args.device, batch_size=args.batch_size),
                             execution=ExecutionOptions(cluster="threads"))
        seconds = time.perf_counter() - started
    stages = {stage.name: round(stage.seconds, 2) for stage in report.stages}
    total_mp = args.size ** 2 / 1e6
    tiles = plan.mask.tiles_touched
    unet_tflop = tiles * args.steps * UNET_GFLOP_128 * (plan.grid.tile / 128) ** 2 / 1e3
    peak = PEAK_TFLOPS.get(args.device.split(":")[0])
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "args": vars(args), "grid": dict(plan.grid), "mask_fraction": fraction,
        "model_build_s": round(build_s, 1), "seconds": round(seconds, 2), "stages": stages,
        "tiles_computed": tiles, "tiles_whole_grid": plan.tile_grid().computed_tile_count(),
        "total_mp_per_s": total_mp / seconds, "masked_mp_per_s": total_mp * fraction / seconds,
        "unet_tflop": unet_tflop,
        "unet_mfu_in_denoise": unet_tflop / stages["denoise"] / peak if peak else None,
    }
    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "inpaint.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
