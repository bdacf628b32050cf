"""Devices and dtypes: ``--device`` and ``--dtype`` resolved to torch's, with errors that say what
this
machine has."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from tiler.errors import BadParameter

if TYPE_CHECKING:  # pragma: no cover
    import torch


log = logging.getLogger("tiler")

DTYPES = ("float32", "float16", "bfloat16")


# --- devices and dtypes
# ----------------------------------------------------------------------------
_WARNED: set[str] = set()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device;
    BadParameter("device") for a GPU this machine does not have."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise BadParameter("device", f"{device!r}; expected auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
        raise BadParameter(
            "device", f"{device!r}: no CUDA GPU is available here ({build}); use cpu or auto"
        )
    index = int(match.group(1) or 0)
    if index >= count:
        raise BadParameter(
            "device",
            f"{device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}",
        )
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype: ``None`` gives float32 on CPU and bfloat16 on CUDA (float32 on GPUs
    without bfloat16); otherwise one of float32, float16, bfloat16."""
    import torch

    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float32
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise BadParameter("dtype", f"{dtype!r}; expected one of {', '.join(DTYPES)}")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadParameter(
            "dtype",
            f"bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
            "use float16 or float32",
        )
    if name != "float32" and device.type == "cpu" and name not in _WARNED:
        _WARNED.add(name)  # planning and loading both resolve it: one warning per process
        log.warning(
            "--dtype %s on CPU is slower and less precise than float32, which is recommended there",
            name,
        )
    return getattr(torch, name)
