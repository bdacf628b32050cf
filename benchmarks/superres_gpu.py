#!/usr/bin/env python
"""LDM 4x super-resolution throughput on the real architecture with random weights (the compute
cost is the real one): tiler end to end (denoise + decode + overlap + export) against diffusers'
LDMSuperResolutionPipeline called on each 128x128 tile in float32 with batch 1, plus the bare
UNet's model-FLOPs utilisation (MFU) and the tiled decoder's error against a whole-canvas decode.

    python benchmarks/superres_gpu.py --size 1024 --steps 20 100            # on a CUDA machine
    python benchmarks/superres_gpu.py --device cpu --size 64 --steps 2 --tile 32 --overlap 8 \\
        --region 64 --halo 8 --decode-tile 32 --decode-halo 8 --baseline-tiles 1 --unet-batch 2

Prints a table; with $OUT set (the device tool) also writes $OUT/superres_gpu.json.
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

UNET_GFLOP_128 = 322.6  # per forward at 128 x 128 latent, batch 1 (scales with the pixel count)
PEAK_TFLOPS = {"cuda": 989.0}  # H100 SXM dense bf16


def build_model(folder: Path, seed: int = 0) -> Path:
    """The real architecture with random weights, saved in the LDMSuperResolutionPipeline layout."""
    from real_models import read_config, save_components

    save_components(folder, read_config("ldm-super-resolution-4x"), seed)
    index = {
        "_class_name": "LDMSuperResolutionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DModel"],
        "vqvae": ["diffusers", "VQModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def make_input(path: Path, size: int):
    """Imagery-like uint8 RGB: smooth structure, edges, noise."""
    import rasterio
    from affine import Affine

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rng = np.random.default_rng(0)
    bands = []
    for band in range(3):
        smooth = (
            np.sin(xx / (17 + 5 * band))
            + np.cos(yy / (23 + 3 * band))
            + ((xx // 97 + yy // 89) % 3) / 2
        )
        bands.append(np.clip(90 + 45 * smooth + 8 * rng.standard_normal((size, size)), 0, 255))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10, 0, 500000, 0, -10, 4600000),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(np.stack(bands).astype("uint8"))


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def unet_mfu(
    model_dir: Path, device: str, batch: int, latent: int, compile: bool, repeats: int = 10
):
    """Bare UNet forward: bf16 (fp32 on CPU), channels_last on CUDA; ms per call and MFU."""
    import torch
    from diffusers import UNet2DModel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    unet = UNet2DModel.from_pretrained(model_dir / "unet", torch_dtype=dtype).to(device).eval()
    x = torch.randn(batch, 6, latent, latent, device=device, dtype=dtype)
    if device.startswith("cuda"):
        unet = unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    call = torch.compile(unet) if compile else unet
    with torch.inference_mode():
        for _ in range(3):
            call(x, 500)
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            call(x, 500)
        sync(device)
    seconds = (time.perf_counter() - started) / repeats
    tflops = batch * UNET_GFLOP_128 * (latent / 128) ** 2 / seconds / 1e3
    peak = PEAK_TFLOPS.get(device.split(":")[0])
    return {
        "batch": batch,
        "latent": latent,
        "compile": compile,
        "ms_per_call": seconds * 1e3,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
    }


def baseline(model_dir: Path, device: str, steps: int, tiles: int):
    """diffusers' LDMSuperResolutionPipeline, float32, batch 1, one 128x128 tile per call."""
    import torch
    from diffusers import UNet2DModel, VQModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
        LDMSuperResolutionPipeline,
    )
    from diffusers.schedulers import DDIMScheduler

    pipe = LDMSuperResolutionPipeline(
        vqvae=VQModel.from_pretrained(model_dir / "vqvae"),
        unet=UNet2DModel.from_pretrained(model_dir / "unet"),
        scheduler=DDIMScheduler.from_pretrained(model_dir / "scheduler"),
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    pipe(image, num_inference_steps=steps, eta=0.0, output_type="np")  # warm-up
    sync(device)
    started = time.perf_counter()
    for _ in range(tiles):
        pipe(image, num_inference_steps=steps, eta=0.0, output_type="np")
    sync(device)
    seconds = (time.perf_counter() - started) / tiles
    return {
        "steps": steps,
        "seconds_per_tile": seconds,
        "output_mp_per_s": 512 * 512 / 1e6 / seconds,
    }


def tiler_run(model_dir: Path, source: Path, work: Path, args, steps: int, compile: bool):
    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.quality.seams import seam_report
    from tiler.tasks import plan_upscale

    output = work / f"out_{steps}_{int(compile)}.tif"
    plan = plan_upscale(
        source,
        output,
        model=str(model_dir),
        tile=args.tile,
        overlap=args.overlap,
        region=args.region,
        halo=args.halo,
        diffusion=DiffusionOptions(
            steps=steps,
            device=args.device,
            decode_tile=args.decode_tile,
            decode_halo=args.decode_halo,
        ),
    )
    started = time.perf_counter()
    report = run_plan(
        plan,
        overwrite=True,
        runtime=RuntimeOptions(device=args.device, batch_size=args.batch_size, compile=compile),
    )
    seconds = time.perf_counter() - started
    stages = {stage.name: stage.seconds for stage in report.stages}
    evaluations = plan.tile_grid().computed_tile_count() * steps
    unet_tflop = evaluations * UNET_GFLOP_128 * (plan.grid.tile / 128) ** 2 / 1e3
    peak = PEAK_TFLOPS.get(args.device.split(":")[0])
    output_mp = plan.output.width * plan.output.height / 1e6
    seams = seam_report(
        output
    ).index  # tile, region, decode boundaries (random weights: see README)
    output.unlink()
    return {
        "steps": steps,
        "compile": compile,
        "grid": dict(plan.grid),
        "decode": [plan.diffusion.decode_tile, plan.diffusion.decode_halo],
        "seconds": seconds,
        "stages": stages,
        "output_mp": output_mp,
        "output_mp_per_s": output_mp / seconds,
        "overhead_factor": plan.tile_grid().overhead_factor(),
        "unet_mfu_in_denoise": unet_tflop / stages["denoise"] / peak if peak else None,
        "seam_index": seams,
    }


def decode_error(model_dir: Path, device: str, latent: int, tile: int, halos, batch: int = 4):
    """Tiled decode (tiler.ldm.first_stage) against one whole-canvas decode: error in [-1, 1]
    units and throughput, for several halos."""
    import torch
    from diffusers import VQModel

    from tiler.geometry.grid import Box, Span
    from tiler.ldm.first_stage import tiled_pass
    from tiler.raster.sources import read_reflected

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    vq = VQModel.from_pretrained(model_dir / "vqvae", torch_dtype=dtype).to(device).eval()
    torch.manual_seed(1)
    image = (
        torch.nn.functional.interpolate(
            torch.rand(1, 3, latent // 8, latent // 8), size=latent * 4, mode="bicubic"
        )
        * 2
        - 1
    )
    with torch.inference_mode():
        z = vq.encode(image.to(device, dtype)).latents.float()
        whole = vq.decode(z.to(dtype)).sample.float().cpu().numpy()[0]
    z = z.cpu().numpy()[0]

    def read_latent(box):
        return read_reflected(lambda rows, cols: z[:, rows, cols], box, latent, latent)

    def decode_batch(latents):
        with torch.inference_mode():
            return (
                vq.decode(torch.from_numpy(latents).to(device, dtype)).sample.float().cpu().numpy()
            )

    results = []
    core = Box(Span(0, latent), Span(0, latent))
    for halo in halos:
        sync(device)
        started = time.perf_counter()
        tiled = tiled_pass(decode_batch, read_latent, core, tile, halo, 4, 3)
        sync(device)
        seconds = time.perf_counter() - started
        error = np.abs(tiled - whole)
        results.append(
            {
                "tile": tile,
                "halo": halo,
                "max_abs": float(error.max()),
                "mean_abs": float(error.mean()),
                "p99_abs": float(np.percentile(error, 99)),
                "output_mp_per_s": (latent * 4) ** 2 / 1e6 / seconds,
            }
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024, help="input px (square)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--tile", type=int, default=None, help="default: tiler's")
    parser.add_argument("--overlap", type=int, default=None, help="default: tiler's")
    parser.add_argument("--region", type=int, default=None, help="default: tiler's")
    parser.add_argument("--halo", type=int, default=None, help="default: tiler's")
    parser.add_argument("--decode-tile", type=int, default=None, help="default: tiler's")
    parser.add_argument("--decode-halo", type=int, default=None, help="default: tiler's")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also run tiler with --compile")
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--baseline-tiles", type=int, default=3)
    parser.add_argument("--decode-latent", type=int, default=256)
    parser.add_argument("--decode-halos", type=int, nargs="*", default=[0, 8, 16, 32])
    parser.add_argument(
        "--decode-tiles",
        type=int,
        nargs="*",
        default=None,
        help="decode tiles to sweep in the decode measurement [--decode-tile or tiler's]",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["mfu", "baseline", "tiler", "decode"]
    )
    args = parser.parse_args()

    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_model(work / "model")
        source = work / "input.tif"
        make_input(source, args.size)
        if "mfu" not in args.skip:
            results["unet"] = [unet_mfu(model_dir, args.device, args.unet_batch, 128, False)]
            if args.compile:
                results["unet"].append(unet_mfu(model_dir, args.device, args.unet_batch, 128, True))
            print_rows("bare UNet", results["unet"])
        if "baseline" not in args.skip:
            results["baseline"] = [
                baseline(model_dir, args.device, steps, args.baseline_tiles) for steps in args.steps
            ]
            print_rows(
                "diffusers LDMSuperResolutionPipeline, fp32, batch 1, per 128x128 tile",
                results["baseline"],
            )
        if "tiler" not in args.skip:
            results["tiler"] = []
            for compile in [False, True] if args.compile else [False]:
                if compile:  # compile every shape first: compilation is a one-off cost per process
                    warm = tiler_run(model_dir, source, work, args, 2, True)
                    print(f"compile warm-up run (2 steps): {warm['seconds']:.1f} s")
                results["tiler"] += [
                    tiler_run(model_dir, source, work, args, steps, compile) for steps in args.steps
                ]
            print_rows("tiler upscale (end to end)", results["tiler"])
            for run in results["tiler"]:
                base = next(
                    (b for b in results.get("baseline", []) if b["steps"] == run["steps"]), None
                )
                if base:
                    print(
                        f"speed-up at {run['steps']} steps (compile={run['compile']}): "
                        f"{run['output_mp_per_s'] / base['output_mp_per_s']:.1f}x the pipeline"
                    )
        if "decode" not in args.skip:
            from tiler.ldm.options import DEFAULTS

            tiles = args.decode_tiles or [args.decode_tile or DEFAULTS["decode_tile"]]
            results["decode"] = [
                row
                for tile in tiles
                for row in decode_error(
                    model_dir, args.device, args.decode_latent, tile, args.decode_halos
                )
            ]
            print_rows("tiled VQ decode vs whole-canvas decode", results["decode"])
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "superres_gpu.json").write_text(json.dumps(results, indent=1))


def print_rows(title, rows):
    print(f"\n== {title}")
    for row in rows:
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    sys.stdout.flush()


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


if __name__ == "__main__":
    main()
