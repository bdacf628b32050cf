"""The trained model as a folder ``tiler upscale --model`` / ``tiler inpaint --model`` loads:
super-resolution as a diffusers ``LDMSuperResolutionPipeline`` folder, inpainting in tiler's
model-directory format (``tiler.yaml``), both with safetensors weights and a ``README.md`` model
card (data and licence notices, the command, hardware, wall time). The folder is built beside
OUTPUT and renamed into place, so OUTPUT is never half written."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import yaml

from tiler.errors import OutputError
from tiler.train.architectures import parameter_count

CARD_README = "README.md"


def check_destination(output: Path, overwrite: bool) -> None:
    """An existing OUTPUT is replaced only with ``overwrite``, and only if it is a model folder."""
    if not output.exists():
        return
    if not overwrite:
        raise OutputError(f"{output}: exists; pass --overwrite to replace it")
    if not output.is_dir() or not any(
        (output / m).is_file() for m in ("model_index.json", "tiler.yaml")
    ):
        raise OutputError(f"{output}: exists and is not a model folder; not replacing it")


def write_model(output: Path, task: str, unet, vq, schedule, card: dict, overwrite: bool) -> Path:
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if task == "superres":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
            LDMSuperResolutionPipeline,
        )

        LDMSuperResolutionPipeline(vqvae=vq, unet=unet, scheduler=schedule).save_pretrained(
            staging, safe_serialization=True
        )
    else:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        vq.save_pretrained(staging / "vqvae", safe_serialization=True)
        schedule.save_pretrained(staging / "scheduler")
        (staging / "tiler.yaml").write_text(
            yaml.safe_dump(
                {
                    "format": 1,
                    "task": "inpaint",
                    "name": card["name"],
                    "first-stage": "vqvae",
                    "scale": 1,
                    "conditioning": {"kind": "masked-image-and-mask"},
                    "tile": unet.config.sample_size,
                    "source": "trained with tiler train inpaint",
                },
                sort_keys=False,
            )
        )
    (staging / CARD_README).write_text(model_card(task, unet, vq, card))
    check_destination(output, overwrite)
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
    return output


def model_card(task: str, unet, vq, card: dict) -> str:
    kind = "4x super-resolution" if task == "superres" else "inpainting"
    lines = [
        f"# {card['name']}",
        "",
        f"A latent diffusion model for {kind}, trained with `tiler train {task}`: the first "
        f"stage a VQ autoencoder (f = 4, {parameter_count(vq) / 1e6:.2f} M parameters), the "
        f"latent UNet {parameter_count(unet) / 1e6:.2f} M parameters, "
        f"{unet.config.sample_size} latent px windows.",
        "",
        "## Training data",
        "",
    ]
    lines += [f"- {line}" for line in card["data"]]
    if card["notices"]:
        lines += ["", "## Licence notices", ""] + [f"- {notice}" for notice in card["notices"]]
    lines += [
        "",
        "## How it was made",
        "",
        "```sh",
        card["command"],
        "```",
        "",
        f"- Hardware: {card['hardware']}",
        "- Stages: "
        + "; ".join(
            f"{name} {result.steps} steps in {result.seconds / 60:.1f} min "
            f"(final loss {result.loss:.4f})"
            for name, result in card["stages"].items()
        ),
        f"- Latent normalisation folded into the VQ: {card['latent_note']}",
        "",
        "## Quality",
        "",
        "Measured on held-out areas by `benchmarks/quality.py`; see benchmarks/README.md.",
        "",
    ]
    return "\n".join(lines)


def hardware(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    return (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads), torch {torch.__version__}"
    )
