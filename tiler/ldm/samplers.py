"""Samplers: short names for diffusers schedulers, built from a model's own noise schedule.

tiler ties every random number to a pixel position (keyed noise, tiler/ldm/noise.py), so it accepts
only schedulers whose ``step`` is deterministic or takes its noise as the ``variance_noise``
argument; ancestral samplers that draw their own noise are refused with the reason.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from tiler.errors import BadParameter, first_line
from tiler.ldm.folders import read_scheduler_config

# Short sampler names -> diffusers scheduler class names (plus config overrides in SAMPLER_OPTIONS).
SAMPLERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++-sde": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "dpm++": {"algorithm_type": "dpmsolver++"},
    "dpm++-sde": {"algorithm_type": "sde-dpmsolver++"},
}

# Well-known names of samplers that draw their own noise at each step (refused with a reason).
REFUSED_SAMPLERS: dict[str, str] = {
    "euler-a": "EulerAncestralDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
    "dpm2-a": "KDPM2AncestralDiscreteScheduler",
    "dpm-sde": "DPMSolverSDEScheduler",
}

# Schedulers whose step draws noise only for the SDE algorithm types of their config.
_NOISE_ONLY_FOR_SDE = ("DPMSolverSinglestepScheduler",)

SAMPLERS_ACCEPTED = (
    "accepted: "
    + ", ".join(SAMPLERS)
    + ", or a diffusers scheduler class name that fits the model (e.g. DEISMultistepScheduler)"
)


# --- samplers
# --------------------------------------------------------------------------------------
def check_sampler(sampler: str) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config overrides) for a short sampler name or a class name; raises
    BadParameter for unknown names and for samplers known to draw their own noise. Whether a class
    name fits a given model is checked by ``scheduler_from_config``."""
    text = str(sampler).strip()
    short = text.lower()
    if short in SAMPLERS:
        return SAMPLERS[short], dict(SAMPLER_OPTIONS.get(short, {}))
    if short in REFUSED_SAMPLERS:
        raise _refuse_sampler(text, REFUSED_SAMPLERS[short])
    if text in REFUSED_SAMPLERS.values():  # the class name of a refused short name
        raise _refuse_sampler(text, text)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*Scheduler", text):
        return text, {}
    raise BadParameter("sampler", f"unknown sampler {text!r}; {SAMPLERS_ACCEPTED}")


def _refuse_sampler(name: str, class_name: str) -> BadParameter:
    shown = repr(name) if name == class_name else f"{name!r} ({class_name})"
    return BadParameter(
        "sampler",
        f"{shown} draws its own random noise at each step, but tiler ties all noise to pixel "
        f"positions (keyed noise) so that tiles agree; {SAMPLERS_ACCEPTED}",
    )


def draws_own_noise(scheduler_class: type, config) -> bool:
    """Whether ``scheduler_class.step`` (with ``config``) injects random noise it draws itself
    instead of taking it as ``variance_noise``: such steps cannot use keyed noise."""
    params = inspect.signature(scheduler_class.step).parameters
    if "variance_noise" in params or "generator" not in params:
        return False
    churn = params.get("s_churn")
    if churn is not None and churn.default == 0:  # Euler-style: noise only when s_churn > 0
        return False
    if scheduler_class.__name__ in _NOISE_ONLY_FOR_SDE:
        return str(dict(config).get("algorithm_type", "")).startswith("sde")
    return True


def step_accepts_noise(scheduler) -> bool:
    """Whether ``scheduler.step`` takes ``variance_noise``: the sampling loop must then pass keyed
    noise (DDIM with eta > 0, SDE variants of DPM-Solver++) or the scheduler would draw its own."""
    return "variance_noise" in inspect.signature(scheduler.step).parameters


def scheduler_from_config(config: dict, sampler: str = "ddim"):
    """A diffusers scheduler for ``sampler`` built ``from_config`` of the model's scheduler config.
    Refuses (BadParameter) unknown names, classes that do not fit the model's scheduler (not in its
    ``_compatibles``) and samplers that draw their own noise."""
    class_name, options = check_sampler(sampler)
    import diffusers.schedulers as schedulers

    try:  # diffusers gives placeholders for classes whose optional dependency (torchsde) is missing
        scheduler_class = getattr(schedulers, class_name, None)
        usable = (
            isinstance(scheduler_class, type)
            and hasattr(scheduler_class, "from_config")
            and hasattr(scheduler_class, "step")
        )
    except ImportError as error:
        raise BadParameter(
            "sampler",
            f"{sampler!r} needs a missing package: {first_line(error)}; {SAMPLERS_ACCEPTED}",
        ) from error
    if not usable:
        raise BadParameter("sampler", f"unknown sampler {sampler!r}; {SAMPLERS_ACCEPTED}")
    base_name = config.get("_class_name")
    base_class = getattr(schedulers, base_name, None) if base_name else None
    compatible = {base_name} | {
        getattr(c, "__name__", str(c)) for c in getattr(base_class, "_compatibles", ())
    }
    if base_class is not None and class_name not in compatible:
        raise BadParameter(
            "sampler",
            f"{sampler!r} does not fit this model's {base_name} noise "
            f"schedule; {SAMPLERS_ACCEPTED}",
        )
    if draws_own_noise(scheduler_class, {**config, **options}):
        raise _refuse_sampler(str(sampler), class_name)
    return scheduler_class.from_config(config, **options)


def make_scheduler(model_dir, sampler: str = "ddim"):
    """The scheduler for ``sampler`` built from ``model_dir/scheduler`` (see
    scheduler_from_config)."""
    return scheduler_from_config(read_scheduler_config(model_dir), sampler)
