"""Partition-of-unity blending weights for tiles and regions.

Each tile (or region) gets a separable profile that rises over its overlap with the previous
neighbour and falls over its overlap with the next. The profiles use smoothstep, which satisfies
s(t) + s(1 - t) = 1, so two neighbours sum to one across their overlap; the blender still divides by
the summed weights, which makes the blend a partition of unity at raster edges and wherever more
than two tiles meet.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def edge_ramp(size: int, ramp: int, rise: bool = True, fall: bool = True) -> np.ndarray:
    """1-D weights over ``size`` px: rising over the first ``ramp`` px, falling over the last.

    Weights are sampled at pixel centres, so they are positive everywhere, even at the very edge.
    """
    weights = np.ones(size, dtype=np.float64)
    if ramp <= 0:
        return weights
    centres = np.arange(size, dtype=np.float64) + 0.5
    if rise:
        weights *= smoothstep(centres / ramp)
    if fall:
        weights *= smoothstep((size - centres) / ramp)
    return weights


@lru_cache(maxsize=32)
def tile_weights(size: int, ramp: int) -> np.ndarray:
    """2-D weights of one square tile of ``size`` px whose neighbours overlap it by ``ramp`` px."""
    profile = edge_ramp(size, ramp)
    weights = np.outer(profile, profile)
    weights.setflags(write=False)
    return weights


def region_profile(extent_start: int, extent_stop: int, length: int, halo: int) -> np.ndarray:
    """1-D weights of a region's extent on an axis of ``length`` px.

    Neighbouring regions overlap by ``2 * halo`` px around their shared core boundary; the ramp
    spans that overlap. Sides on the raster edge have no neighbour and no ramp.
    """
    return edge_ramp(
        extent_stop - extent_start, 2 * halo, rise=extent_start > 0, fall=extent_stop < length
    )
