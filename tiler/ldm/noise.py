"""Keyed noise: Gaussian noise that is a pure function of (seed, step, channel, y, x).

A counter-based hash (SplitMix64's finaliser) of the key gives two independent uniforms per latent
pixel, and Box-Muller turns them into one standard normal value. No generator state exists, so any
worker can make the noise of any window of the global latent grid: overlapping tiles and regions
see identical noise, and results do not depend on region size, batch composition, worker count or
restart point. Integer arithmetic runs in torch int64 on the target device (wrapping multiplies give
the low 64 bits, as unsigned arithmetic would), so no noise crosses from the host.
"""

from __future__ import annotations

import math

import torch

from tiler.geometry.grid import Box

_MASK64 = (1 << 64) - 1
INITIAL_STEP = -1  # the step key of the initial latent; denoising steps use their index 0, 1, ...
LOW_RES_STEP = -2  # the key of the x4 upscaler's noised low-res conditioning


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _mix_int(value: int) -> int:
    """SplitMix64 finaliser on a Python int (for the per-(seed, step, channel) prefix)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _shr(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def _mix(values: torch.Tensor) -> torch.Tensor:
    values = values + _GOLDEN
    values = (values ^ _shr(values, 30)) * _MUL1
    values = (values ^ _shr(values, 27)) * _MUL2
    return values ^ _shr(values, 31)


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    """Top 24 bits -> float in (0, 1), never 0 (Box-Muller takes its log)."""
    return (_shr(bits, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def keyed_noise(
    seed: int, step: int, channels: int, box: Box, device="cpu", dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise of shape (channels, h, w) for ``box`` of the global latent grid."""
    if box.y.start < 0 or box.x.start < 0 or box.y.stop > 1 << 31 or box.x.stop > 1 << 31:
        raise ValueError(f"latent box {box} is outside 0..2**31")
    ys = torch.arange(box.y.start, box.y.stop, dtype=torch.int64, device=device)
    xs = torch.arange(box.x.start, box.x.stop, dtype=torch.int64, device=device)
    position = (ys[:, None] << 32) | xs[None, :]
    planes = []
    for channel in range(channels):
        prefix = _signed(_mix_int(_mix_int(_mix_int(seed) ^ (step & _MASK64)) ^ channel))
        first = _mix(position ^ prefix)
        second = _mix(first ^ _GOLDEN)
        radius = torch.sqrt(-2.0 * torch.log(_uniform(first)))
        planes.append(radius * torch.cos((2.0 * math.pi) * _uniform(second)))
    return torch.stack(planes).to(dtype)
