"""The UNet call of a text-conditioned LDM: the prompt's embeddings through cross-attention, the
x4 upscaler's noise level as class labels, and classifier-free guidance (Ho & Salimans): one
batched call with and without the prompt, its two predictions extrapolated,

    prediction = unconditional + scale * (conditional - unconditional),

as diffusers' Stable Diffusion pipelines do. A scale of 1 is the conditional prediction alone, so
the unconditional half is not computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    """What every UNet call of a run adds to its tiles. ``embeddings``: (2, tokens, width) with
    guidance (the negative prompt's, then the prompt's), (1, tokens, width) without, or None;
    ``class_label``: the x4 upscaler's noise level, or None."""

    embeddings: torch.Tensor | None = None
    guidance_scale: float = 1.0
    class_label: int | None = None

    @property
    def guided(self) -> bool:
        return self.embeddings is not None and len(self.embeddings) == 2

    def predictor(self, unet_call):
        """``unet_call(inputs, timestep, encoder_hidden_states=, class_labels=)`` as a call of
        (inputs, timestep) -> one prediction per tile."""
        if self.embeddings is None and self.class_label is None:
            return unet_call

        def predict(inputs: torch.Tensor, timestep) -> torch.Tensor:
            count = len(inputs)
            batch = torch.cat([inputs, inputs]) if self.guided else inputs
            context = None
            if self.embeddings is not None:  # unconditional rows first, as diffusers orders them
                context = self.embeddings.repeat_interleave(count, dim=0)
            labels = None
            if self.class_label is not None:
                labels = torch.full(
                    (len(batch),), self.class_label, dtype=torch.long, device=inputs.device
                )
            prediction = unet_call(
                batch, timestep, encoder_hidden_states=context, class_labels=labels
            )
            if not self.guided:
                return prediction
            unconditional, conditional = prediction.chunk(2)
            return unconditional + self.guidance_scale * (conditional - unconditional)

        return predict
