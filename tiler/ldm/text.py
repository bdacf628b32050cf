"""Text conditioning: prompts -> CLIP embeddings for a text-conditioned UNet's cross-attention.

The tokenizer and text encoder come from the model folder (``tokenizer/``, ``text_encoder/``)
through transformers, and are used as diffusers' Stable Diffusion pipelines use them: the prompt
padded to the tokenizer's limit (77 tokens for CLIP), longer prompts truncated with a warning that
names the dropped words, the text encoder's last hidden state as the embedding. A run encodes its
prompts once (a one-unit stage, tiler/tasks/ldm.py) into a small .npy file in the workdir that
every tile, process and worker reads. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from tiler.errors import ModelError, first_line
from tiler.ldm.folders import SAFETENSORS_SUFFIX, check_weights

log = logging.getLogger("tiler")


@functools.lru_cache(maxsize=2)
def load_tokenizer(model_dir: str):
    """The model's CLIP tokenizer (``model_dir/tokenizer``)."""
    from transformers import CLIPTokenizer

    folder = Path(model_dir) / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ModelError(f"{folder}: cannot load a CLIP tokenizer: {first_line(error)}") from error


def dropped_words(model_dir, prompt: str) -> str:
    """The end of ``prompt`` past the tokenizer's limit ("" when it fits), as diffusers reports
    it."""
    tokenizer = load_tokenizer(str(model_dir))
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="longest", truncation=False).input_ids
    if len(ids) <= limit:
        return ""
    return tokenizer.decode(ids[limit - 1 : -1])  # the start and end tokens take two places


def warn_dropped_words(model_dir, prompts: dict[str, str]):
    """A warning per prompt longer than the tokenizer's limit, naming the words left out."""
    for option, prompt in prompts.items():
        dropped = dropped_words(model_dir, prompt) if prompt else ""
        if dropped:
            limit = load_tokenizer(str(model_dir)).model_max_length
            log.warning(
                "--%s is longer than the text encoder's %d tokens; these words are left out: %s",
                option.replace("_", "-"),
                limit,
                dropped,
            )


@functools.lru_cache(maxsize=1)  # consecutive runs of one model (a workflow) load it once
def load_text_encoder(model_dir, device, dtype, allow_pickle: bool = False):
    """The model's CLIPTextModel (``model_dir/text_encoder``) on ``device`` in ``dtype``, in eval
    mode without gradients."""
    from transformers import CLIPTextModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # tiler shows its own stages' progress
    folder = Path(model_dir) / "text_encoder"
    weights = check_weights(model_dir, ("text_encoder",), allow_pickle=allow_pickle)
    try:
        encoder = CLIPTextModel.from_pretrained(
            str(folder),
            dtype=dtype,
            use_safetensors=weights["text_encoder"].suffix == SAFETENSORS_SUFFIX,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"{folder}: cannot load a CLIPTextModel: {first_line(error)}") from error
    return encoder.eval().requires_grad_(False).to(device)


def encode_prompts(
    model_dir, prompts: list[str], device, dtype, allow_pickle: bool = False
) -> np.ndarray:
    """(len(prompts), tokens, width) float32 embeddings, each prompt padded to the tokenizer's
    limit and truncated past it."""
    import torch

    tokenizer = load_tokenizer(str(model_dir))
    encoder = load_text_encoder(str(model_dir), device, dtype, allow_pickle)
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    # an attention mask only for encoders trained with one (as diffusers decides)
    uses_mask = getattr(encoder.config, "use_attention_mask", False)
    mask = tokens.attention_mask.to(device) if uses_mask else None
    with torch.inference_mode():
        hidden = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return hidden.float().cpu().numpy()
