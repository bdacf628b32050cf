"""The training loop both stages share: AdamW, an EMA of the weights, a budget in steps or
seconds, a tqdm bar with the loss, and checkpoints every few minutes that a re-run resumes from.

Each step's data and noise are a pure function of (seed, stage, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tiler.train import checkpoint

log = logging.getLogger("tiler")
WARMUP_STEPS = 100


@dataclass
class StageResult:
    steps: int
    seconds: float
    loss: float  # mean loss over the last steps


def run_stage(
    name: str,
    module,
    loss_fn: Callable[[int], object],
    folder,
    *,
    steps: int | None,
    seconds: float | None,
    learning_rate: float,
    ema_decay: float,
    checkpoint_seconds: float,
    progress: bool,
    trainable=None,
) -> StageResult:
    """Train ``module`` on ``loss_fn(step)`` until ``steps`` or ``seconds`` are spent (counting
    the time of earlier, interrupted runs), then leave the EMA weights in ``module``."""
    import torch
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    parameters = [p for p in (trainable or module).parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    ema = EMAModel(parameters, decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    state = checkpoint.load(folder, name)
    step, spent, recent = 0, 0.0, []
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step, spent, recent = int(state["step"]), float(state["seconds"]), list(state["recent"])
        log.info("%s: resumed at step %d (%.0f s trained)", name, step, spent)

    def save():
        checkpoint.save(
            folder,
            name,
            {
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict(),
                "step": step,
                "seconds": spent,
                "recent": recent,
            },
        )

    def finished() -> bool:
        return (steps is not None and step >= steps) or (seconds is not None and spent >= seconds)

    module.train()
    bar = tqdm(total=steps, initial=step, desc=name, unit="step", disable=not progress, leave=True)
    last_save = time.monotonic()
    while not finished():
        started = time.monotonic()
        for group in optimizer.param_groups:  # linear warm-up, then constant (EMA smooths)
            group["lr"] = learning_rate * min(1.0, (step + 1) / WARMUP_STEPS)
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        ema.step(parameters)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{name}: the loss became {value} at step {step}; lower --learning-rate"
            )
        recent = (recent + [value])[-50:]
        step += 1
        spent += time.monotonic() - started
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if time.monotonic() - last_save >= checkpoint_seconds:
            save()
            last_save = time.monotonic()
    bar.close()
    save()
    ema.copy_to(parameters)
    module.eval()
    return StageResult(steps=step, seconds=spent, loss=sum(recent) / max(1, len(recent)))
