"""Shared GroupNorm statistics: a first stage without attention made local, so tiled = whole.

A GroupNorm normalises with the mean and variance of its whole input. Decoding window by window,
each window is normalised with its own statistics, so a tiled decode is not the whole-canvas decode
(`benchmarks/tiled_decode_error.py`: the error falls with the halo but stays far above float
rounding). With one set of statistics for the whole run every GroupNorm becomes a per-px affine
map, the coder a convolution of finite reach, and a tiled encode or decode whose halo covers that
reach equals the whole-canvas one under the same statistics, to float rounding.

The statistics are measured once per run over a fixed sample of windows taken as one image (each
GroupNorm pools its mean and variance over all of them), stored in the workdir, and used by every
unit on every worker. Which statistics a call uses is set per thread with ``using``, so two threads
sharing one model can run different modes.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

_mode = threading.local()


def group_norms(module) -> list:
    """``module``'s group norms in module order: torch's, or the batch-invariant replacement
    tiler.models puts in on CPU (anything with ``num_groups`` and ``eps``)."""
    return [m for m in module.modules() if hasattr(m, "num_groups") and hasattr(m, "eps")]


def install(module) -> int:
    """Route ``module``'s GroupNorms through ``_forward`` (plain GroupNorm unless ``using`` says
    otherwise); returns how many there are. Idempotent."""
    norms = group_norms(module)
    for index, norm in enumerate(norms):
        if not isinstance(norm.forward, functools.partial):
            norm.forward = functools.partial(_forward, norm, index, norm.forward)
    return len(norms)


class Recorder:
    """Collects the pooled statistics of each GroupNorm, in module order."""

    def __init__(self, count: int):
        self.stats: list[tuple[np.ndarray, np.ndarray] | None] = [None] * count

    def as_array(self) -> np.ndarray:
        """(layers, 2, groups-padded) float64; NaN pads layers with fewer groups."""
        width = max(len(mean) for mean, _ in self.stats)
        table = np.full((len(self.stats), 2, width), np.nan)
        for index, (mean, var) in enumerate(self.stats):
            table[index, 0, : len(mean)] = mean
            table[index, 1, : len(var)] = var
        return table


@contextlib.contextmanager
def using(stats: np.ndarray | Recorder | None):
    """Within this thread: normalise with ``stats`` (an array from ``Recorder.as_array``), or pool
    and record into a ``Recorder``, or (None) as a plain GroupNorm."""
    previous = getattr(_mode, "stats", None)
    _mode.stats = stats
    try:
        yield
    finally:
        _mode.stats = previous


def _forward(norm, index: int, plain, x):
    stats = getattr(_mode, "stats", None)
    if stats is None:
        return plain(x)
    groups = norm.num_groups
    grouped = x.float().reshape(x.shape[0], groups, -1, *x.shape[2:])
    if isinstance(stats, Recorder):  # all windows as one image
        dims = [0, *range(2, grouped.dim())]
        mean = grouped.mean(dim=dims)
        var = grouped.var(dim=dims, unbiased=False)
        stats.stats[index] = (mean.double().cpu().numpy(), var.double().cpu().numpy())
    else:
        mean = grouped.new_tensor(stats[index, 0, :groups])
        var = grouped.new_tensor(stats[index, 1, :groups])
    shape = (1, groups) + (1,) * (grouped.dim() - 2)
    normalised = (grouped - mean.reshape(shape)) * (var.reshape(shape) + norm.eps).rsqrt()
    out = normalised.reshape(x.shape)
    if norm.weight is not None:
        channel = (1, -1) + (1,) * (x.dim() - 2)
        out = out * norm.weight.float().reshape(channel) + norm.bias.float().reshape(channel)
    return out.to(x.dtype)


def sample_boxes(height: int, width: int, side: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of up to ``count`` windows of ``side`` px spread evenly over a
    ``height`` x ``width`` grid, centred in the cells of a lattice (away from the borders, where a
    scene often has no data); a pure function of the plan, the same on every worker."""
    per_axis = max(1, int(np.sqrt(count)))

    def starts(length: int) -> list[int]:
        last = max(0, length - side)
        return sorted({round(last * (i + 0.5) / per_axis) for i in range(per_axis)})

    return [(y, x) for y in starts(height) for x in starts(width)]
