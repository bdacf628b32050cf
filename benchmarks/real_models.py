"""The real architectures of benchmarks/configs/ with random weights (the compute cost is the real
one; the weights cannot be downloaded here), saved where tiler loads them from."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


def read_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def save_components(folder: Path, config: dict, seed: int = 0) -> Path:
    """unet/, vqvae/, scheduler/ from a config's diffusers sections, random weights."""
    import torch
    from diffusers import UNet2DModel, VQModel
    from diffusers.schedulers import DDIMScheduler

    def strip(section: dict) -> dict:
        return {key: value for key, value in section.items() if not key.startswith("_")}

    torch.manual_seed(seed)
    UNet2DModel(**strip(config["unet"])).save_pretrained(folder / "unet")
    VQModel(**strip(config["vqvae"])).save_pretrained(folder / "vqvae")
    DDIMScheduler(**strip(config["scheduler"])).save_pretrained(folder / "scheduler")
    return folder


def build_model_dir(folder: Path, name: str, seed: int = 0) -> Path:
    """The ``name`` config (ldm-inpainting, ldm-semantic-synthesis) in tiler's model-directory
    format: its components, a tiler.yaml card and, for synthesis, the label rescaler."""
    import torch
    from safetensors.torch import save_file

    from tiler.ldm.card import RESCALER, RESCALER_KEY, ModelCard, write_card

    config = read_config(name)
    save_components(folder, config, seed)
    if "cond_stage" in config:  # semantic synthesis: one-hot labels -> rescaler -> 1x1 conv
        rescaler = config["cond_stage"]
        conditioning = {
            "kind": "labels",
            "classes": rescaler["in_channels"],
            "out-channels": rescaler["out_channels"],
            "rescale-stages": rescaler["n_stages"],
            "multiplier": rescaler["multiplier"],
            "method": rescaler["method"],
        }
        (folder / RESCALER).parent.mkdir(exist_ok=True)
        weight = torch.randn(
            rescaler["out_channels"],
            rescaler["in_channels"],
            1,
            1,
            generator=torch.Generator().manual_seed(seed),
        )
        save_file({RESCALER_KEY: weight}, str(folder / RESCALER))
        task = "synthesis"
    else:
        conditioning, task = {"kind": "masked-image-and-mask"}, "inpaint"
    write_card(
        folder,
        ModelCard.model_validate(
            {
                "task": task,
                "name": f"{name} (random weights)",
                "conditioning": conditioning,
                "source": config["source"],
            }
        ),
    )
    return folder


# --- what the task benchmarks (inpaint.py, synthesis.py) share
# -------------------------------------
PEAK_TFLOPS = {"cuda": 989.0}  # H100 SXM dense bf16


def task_arguments(description: str, size_help: str):
    """The command line of a task benchmark: device, size, steps, batch size, the grid."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=4096, help=size_help)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None)
    for name in ("tile", "overlap", "region", "halo", "decode-tile", "decode-halo"):
        parser.add_argument(f"--{name}", type=int, default=None, help="default: tiler's")
    return parser


def diffusion_options(args):
    from tiler.ldm.options import DiffusionOptions

    return DiffusionOptions(
        steps=args.steps,
        device=args.device,
        decode_tile=args.decode_tile,
        decode_halo=args.decode_halo,
    )


def grid_options(args) -> dict:
    return dict(tile=args.tile, overlap=args.overlap, region=args.region, halo=args.halo)


def timed_run(plan, args):
    """Run ``plan`` in this process; (report, seconds)."""
    import time

    from tiler.execution.cluster import ExecutionOptions
    from tiler.execution.run import run_plan
    from tiler.ldm.options import RuntimeOptions

    started = time.perf_counter()
    report = run_plan(
        plan,
        runtime=RuntimeOptions(device=args.device, batch_size=args.batch_size),
        execution=ExecutionOptions(cluster="threads"),
    )
    return report, time.perf_counter() - started


def measurements(plan, args, report, seconds: float, tiles: int, gflop_128: float) -> dict:
    """The figures every task benchmark prints: stage times and the UNet's FLOPs and MFU."""
    import torch

    stages = {stage.name: round(stage.seconds, 2) for stage in report.stages}
    unet_tflop = tiles * args.steps * gflop_128 * (plan.grid.tile / 128) ** 2 / 1e3
    peak = PEAK_TFLOPS.get(args.device.split(":")[0])
    return {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "args": vars(args),
        "grid": dict(plan.grid),
        "seconds": round(seconds, 2),
        "stages": stages,
        "tiles_computed": tiles,
        "unet_tflop": unet_tflop,
        "unet_mfu_in_denoise": unet_tflop / stages["denoise"] / peak if peak else None,
    }


def publish(result: dict, name: str):
    """Print ``result``; with $OUT set (the device tool), also write $OUT/NAME.json."""
    import os

    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"{name}.json").write_text(json.dumps(result, indent=1))
