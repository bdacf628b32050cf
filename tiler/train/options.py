"""What ``tiler train`` is asked to do, validated once (frozen; bad values name the option)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tiler.errors import BadParameter

TASKS = ("superres", "inpaint")
SIZES = ("tiny", "small", "base")
# What the trained weights depend on: a checkpoint made with other values is not resumed.
TRAINED_BY = (
    "task",
    "sources",
    "bands",
    "value_range",
    "hold_out",
    "first_stage",
    "size",
    "window",
    "batch_size",
    "first_stage_window",
    "first_stage_batch_size",
    "learning_rate",
    "ema_decay",
    "prediction",
    "blur",
    "lr_noise",
    "seed",
)


class TrainOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Literal["superres", "inpaint"]
    sources: tuple[str, ...]
    output: str
    bands: str | None = None
    value_range: tuple[float, float] | None = None
    hold_out: tuple[tuple[float, float, float, float], ...] = ()
    first_stage: str | None = None  # reuse this model folder's first stage (frozen)
    size: Literal["tiny", "small", "base"] = "small"
    # budget: steps of each stage, or minutes in all (first_stage_share of them for the first stage)
    steps: int | None = Field(default=None, ge=1)
    first_stage_steps: int | None = Field(default=None, ge=0)
    minutes: float | None = Field(default=None, gt=0)
    first_stage_share: float = Field(default=0.35, gt=0, lt=1)
    window: int = Field(default=64, ge=8)  # UNet windows, latent px
    batch_size: int = Field(default=16, ge=1)
    first_stage_window: int = Field(default=64, ge=8)  # autoencoder windows, image px
    first_stage_batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    prediction: Literal["v_prediction", "epsilon"] = "v_prediction"
    blur: float = Field(default=0.0, ge=0)  # super-resolution: Gaussian sigma in high-res px
    lr_noise: float = Field(default=0.0, ge=0)  # super-resolution: noise std on the [-1, 1] input
    device: str = "auto"
    seed: int = 0
    checkpoint_minutes: float = Field(default=3.0, gt=0)
    overwrite: bool = False
    notices: tuple[str, ...] = ()
    command: str = ""

    def model_post_init(self, _context) -> None:
        if self.steps is None and self.minutes is None:
            raise BadParameter(
                "steps/minutes",
                "neither is given; expected a number of training "
                "steps or a wall-time budget in minutes",
            )
        if self.window % 4:
            raise BadParameter(
                "window", f"{self.window} is not a multiple of 4 (the UNet halves it twice)"
            )
        if self.first_stage_window % 4:
            raise BadParameter(
                "first_stage_window",
                f"{self.first_stage_window} is not a multiple of 4 (the first stage's factor)",
            )

    def fingerprint(self) -> str:
        """Identity of the training run (what the weights depend on; not the budget or device)."""
        data = self.model_dump(include=set(TRAINED_BY), mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def stage_steps(self, stage: str) -> int | None:
        """The step budget of ``stage`` (``first_stage`` or ``unet``); None: minutes decide."""
        if self.steps is None:
            return None
        if stage == "unet":
            return self.steps
        return (
            self.first_stage_steps
            if self.first_stage_steps is not None
            else max(1, self.steps // 2)
        )

    def stage_seconds(self, stage: str) -> float | None:
        """The wall-time budget of ``stage``; None: steps decide."""
        if self.minutes is None:
            return None
        share = self.first_stage_share if stage == "first_stage" else 1 - self.first_stage_share
        if self.first_stage is not None:  # a given first stage: all the time for the UNet
            share = 0.0 if stage == "first_stage" else 1.0
        return self.minutes * 60 * share
