"""tiler's model-directory format, for tasks diffusers has no pipeline for (inpainting, semantic
synthesis) and any LDM in general: diffusers component folders saved with ``save_pretrained`` plus
a ``tiler.yaml`` model card naming the task, the scale and the conditioning::

    tiler.yaml      the card (below)
    unet/           UNet2DModel: latent ++ conditioning in, noise prediction out
    vqvae/ | vae/   the first stage: VQModel or AutoencoderKL (``first-stage`` names the folder)
    scheduler/      the training noise schedule
    cond_stage/     synthesis only: label_rescaler.safetensors (``channel_mapper.weight``,
                    out x classes x 1 x 1), the learned 1x1 conv of CompVis' SpatialRescaler

``tiler.yaml`` for the CompVis inpainting model::

    format: 1
    task: inpaint                  # superres | inpaint | synthesis
    name: CompVis LDM inpainting (big)
    first-stage: vqvae
    scale: 1                       # output px per input px
    conditioning: {kind: masked-image-and-mask}
    source: CompVis/latent-diffusion models/ldm/inpainting_big

and for semantic synthesis: ``conditioning: {kind: labels, classes: 182, rescale-stages: 2,
multiplier: 0.5, method: bilinear}``. Reading a card checks the folders and the channel layout
(UNet input = latent + conditioning channels) without loading weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiler.errors import ModelError, first_line

CARD = "tiler.yaml"

RESCALER = Path("cond_stage") / "label_rescaler.safetensors"

RESCALER_KEY = "channel_mapper.weight"

FIRST_STAGE_CLASSES = {"vqvae": "VQModel", "vae": "AutoencoderKL"}

STRICT = ConfigDict(
    extra="forbid", frozen=True, alias_generator=lambda name: name.replace("_", "-")
)


class LowResImage(BaseModel):
    """Super-resolution: the low-resolution image, in [-1, 1], at latent size."""

    model_config = STRICT
    kind: Literal["low-res-image"]

    def channels(self, latent: int) -> int:
        return 3


class MaskedImageAndMask(BaseModel):
    """Inpainting: the first stage's encoding of the masked image (latent channels) ++ the mask
    at latent size (1 channel, +1 = fill, -1 = keep)."""

    model_config = STRICT
    kind: Literal["masked-image-and-mask"]

    def channels(self, latent: int) -> int:
        return latent + 1


class Labels(BaseModel):
    """Semantic synthesis: one-hot labels -> ``rescale-stages`` x ``method`` resizing by
    ``multiplier`` -> a learned 1x1 conv to ``out-channels`` (CompVis' SpatialRescaler)."""

    model_config = STRICT
    kind: Literal["labels"]
    classes: int = Field(ge=2)
    out_channels: int = Field(default=3, ge=1)
    rescale_stages: int = Field(default=2, ge=0)
    multiplier: float = Field(default=0.5, gt=0)
    method: Literal["bilinear", "nearest", "bicubic", "area"] = "bilinear"

    def channels(self, latent: int) -> int:
        return self.out_channels


Conditioning = Union[LowResImage, MaskedImageAndMask, Labels]

TASK_CONDITIONING = {
    "superres": "low-res-image",
    "inpaint": "masked-image-and-mask",
    "synthesis": "labels",
}


class ModelCard(BaseModel):
    model_config = STRICT

    format: Literal[1] = 1
    task: Literal["superres", "inpaint", "synthesis"]
    name: str = ""
    first_stage: Literal["vqvae", "vae"] = "vqvae"
    scale: int = Field(default=1, ge=1)
    conditioning: Conditioning = Field(discriminator="kind")
    tile: int | None = Field(default=None, ge=8)  # recommended latent tile, if the card knows one
    source: str = ""


def read_card(model_dir) -> ModelCard:
    """The card of ``model_dir``, checked against its folders and configs (no weights loaded)."""
    import yaml

    model_dir = Path(model_dir)
    path = model_dir / CARD
    data = _read(
        path,
        yaml.safe_load,
        "YAML",
        f"a tiler model folder needs a {CARD} model card (see `tiler convert`)",
    )
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(
            str(part) for part in error["loc"] if part not in TASK_CONDITIONING.values()
        )  # drop pydantic's union tags
        raise ModelError(
            f"{path}: {where or '(top level)'}: {error.get('input')!r}: {error['msg']}"
        ) from None
    if card.conditioning.kind != TASK_CONDITIONING[card.task]:
        raise ModelError(
            f"{path}: conditioning.kind: {card.conditioning.kind!r} does not fit task "
            f"{card.task!r}; expected {TASK_CONDITIONING[card.task]!r}"
        )
    check_layout(model_dir, card)
    return card


def check_layout(model_dir: Path, card: ModelCard) -> None:
    """The component folders exist with the right classes, and the UNet's channels fit the first
    stage and the conditioning."""
    unet = _config(model_dir / "unet", "UNet2DModel")
    first = _config(model_dir / card.first_stage, FIRST_STAGE_CLASSES[card.first_stage])
    _config(model_dir / "scheduler", None, "scheduler_config.json")
    latent = int(first["latent_channels"])
    expected_in = latent + card.conditioning.channels(latent)
    if unet.get("in_channels") != expected_in or unet.get("out_channels") != latent:
        raise ModelError(
            f"{model_dir / 'unet' / 'config.json'}: in_channels {unet.get('in_channels')}, "
            f"out_channels {unet.get('out_channels')}; expected {expected_in} in "
            f"({latent} latent + {expected_in - latent} {card.conditioning.kind}) and "
            f"{latent} out for the {card.first_stage} and the card's conditioning"
        )
    if isinstance(card.conditioning, Labels):
        check_rescaler(model_dir / RESCALER, card.conditioning)


def _config(folder: Path, class_name: str | None, name: str = "config.json") -> dict:
    path = folder / name
    config = _read(
        path,
        json.loads,
        "JSON",
        f"expected a diffusers {folder.name} folder saved with save_pretrained",
    )
    if class_name and config.get("_class_name", class_name) != class_name:
        raise ModelError(f"{path}: a {config['_class_name']}; expected a {class_name}")
    return config


def _read(path: Path, parse, kind: str, missing: str):
    """``parse`` of the text at ``path``; a missing or unreadable file is one ModelError."""
    import yaml

    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {missing}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSONDecodeError, bad UTF-8
        raise ModelError(f"{path}: not readable {kind} ({first_line(exc)})") from None


def check_rescaler(path: Path, labels: Labels) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            shape = tuple(weights.get_slice(RESCALER_KEY).get_shape())
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing (the synthesis model's learned label rescaler)"
        ) from None
    except Exception as exc:  # safetensors raises its own types for a bad file or a missing key
        raise ModelError(f"{path}: no readable {RESCALER_KEY} ({first_line(exc)})") from None
    expected = (labels.out_channels, labels.classes, 1, 1)
    if shape != expected:
        raise ModelError(
            f"{path}: {RESCALER_KEY} has shape {shape}; expected {expected} "
            "(out-channels x classes x 1 x 1 from the card)"
        )


def write_card(model_dir, card: ModelCard) -> Path:
    """Save ``card`` as ``model_dir/tiler.yaml`` (keys as the card spells them)."""
    import yaml

    path = Path(model_dir) / CARD
    path.write_text(yaml.safe_dump(card.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path
