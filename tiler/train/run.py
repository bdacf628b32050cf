"""``train(options)``: the two stages in order, resumable, ending in a model folder."""

from __future__ import annotations

import logging
from pathlib import Path

from tiler.errors import ModelError
from tiler.train import checkpoint, objectives
from tiler.train.architectures import FACTOR, noise_schedule
from tiler.train.architectures import first_stage as new_first_stage
from tiler.train.architectures import unet as new_unet
from tiler.train.data import WindowSampler, describe_sources
from tiler.train.export import check_destination, hardware, write_model
from tiler.train.loop import StageResult, run_stage
from tiler.train.options import TrainOptions

log = logging.getLogger("tiler")


def train(options: TrainOptions, progress: bool = True) -> Path:
    """Train the first stage (unless given), then the UNet; write the model folder; return it."""
    # 1. check everything cheap before any training (and before importing torch): destination,
    # rasters, device
    output = Path(options.output)
    check_destination(output, options.overwrite)
    sampler = WindowSampler.open(
        options.sources,
        options.bands,
        options.value_range,
        options.hold_out,
        (options.first_stage_window, options.window * FACTOR),
        options.seed,
    )
    import torch

    from tiler.ldm.devices import resolve_device

    device = resolve_device(options.device)
    folder = checkpoint.run_folder(str(output), options.fingerprint(), options.overwrite)
    torch.manual_seed(options.seed)  # initial weights
    stages: dict[str, StageResult] = {}
    common = dict(
        folder=folder,
        learning_rate=options.learning_rate,
        ema_decay=options.ema_decay,
        checkpoint_seconds=options.checkpoint_minutes * 60,
        progress=progress,
    )

    # 2. the first stage: trained once, then frozen with unit-variance latents
    if options.first_stage:
        vq, latent_note = (
            _given_first_stage(options.first_stage, device),
            "none (given first stage)",
        )
    else:
        vq = new_first_stage(options.size, attention=options.task == "superres").to(device)
        trainer = objectives.first_stage_trainer(vq)
        loss = objectives.first_stage_loss(
            trainer,
            sampler,
            options.first_stage_batch_size,
            options.first_stage_window,
            options.seed,
            device,
        )
        steps, seconds = options.stage_steps("first_stage"), options.stage_seconds("first_stage")
        if (folder / "unet.pt").exists():  # the UNet learnt this first stage's latents: keep it
            steps, seconds = None, 0.0
        stages["first stage"] = run_stage(
            "first_stage", trainer, loss, steps=steps, seconds=seconds, **common
        )
        std, mean = objectives.normalise_latents(
            vq, sampler, options.first_stage_window, options.seed, device
        )
        latent_note = f"scale {std:.4f}, channel means {', '.join(f'{m:.4f}' for m in mean)}"
    vq.requires_grad_(False).eval()

    # 3. the latent UNet, conditioned by concatenation
    condition_channels = 3 if options.task == "superres" else vq.config.latent_channels + 1
    unet = new_unet(options.size, condition_channels, options.window).to(device)
    schedule = noise_schedule(options.prediction)
    loss = objectives.unet_loss(options.task, unet, vq, schedule, sampler, options, device)
    stages["unet"] = run_stage(
        "unet",
        unet,
        loss,
        steps=options.stage_steps("unet"),
        seconds=options.stage_seconds("unet"),
        **common,
    )

    # 4. the model folder and its card
    card = {
        "name": f"tiler {options.task} ({output.name})",
        "data": describe_sources(sampler),
        "notices": list(options.notices),
        "command": options.command or "(library call)",
        "hardware": hardware(device),
        "stages": stages,
        "latent_note": latent_note,
    }
    written = write_model(
        output, options.task, unet.cpu(), vq.cpu(), schedule, card, options.overwrite
    )
    log.info("kept the checkpoints in %s (delete them, or re-run to resume)", folder)
    return written


def _given_first_stage(model_dir: str, device):
    """The ``vqvae`` of a model folder (either layout)."""
    from diffusers import VQModel

    folder = Path(model_dir) / "vqvae"
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"{folder}: missing; --first-stage expects a model folder with a "
            "vqvae/ first stage (a tiler train output)"
        )
    try:
        return VQModel.from_pretrained(folder, use_safetensors=True).to(device)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{folder}: cannot load a VQModel: {error}") from error
