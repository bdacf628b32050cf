"""Blending weighted pieces (tiles of a region, regions of an output chunk) over one canvas."""

from __future__ import annotations

import numpy as np

from tiler.geometry.grid import Box


class Blender:
    """Accumulates ``sum(w * values) / sum(w)`` per pixel and band over ``canvas``.

    Only valid pixels carry weight, so pixels without data never leak into their neighbours; a
    pixel is valid in the result when any piece had data there. Sums are float64 so that pieces
    that agree (exact models) blend back to their own value bit for bit once cast to the dtype.
    With ``disjoint=True`` pieces never overlap, and are placed rather than summed.
    """

    def __init__(self, canvas: Box, bands: int, disjoint: bool = False):
        self.canvas = canvas
        self.disjoint = disjoint
        shape = (bands, *canvas.shape)
        if disjoint:  # every px is placed, or left invalid: values need no zeroing
            self.values = np.empty(shape, dtype=np.float32)
            self.valid = np.zeros(shape, dtype=bool)
        else:
            self.total = np.zeros(shape, dtype=np.float64)
            self.weight = np.zeros(shape, dtype=np.float64)

    def add(self, box: Box, values: np.ndarray, valid: np.ndarray, weights: np.ndarray | None):
        """Add ``values`` (bands, h, w) covering ``box``; the part outside the canvas is dropped.
        ``valid`` has the values' shape or broadcasts to it."""
        inner = box.intersection(self.canvas)
        if inner is None:
            return
        src = inner.relative_to(box)
        dst = inner.relative_to(self.canvas)
        if valid.shape[1:] == values.shape[1:]:  # else a broadcastable all-True
            valid = valid[:, src[0], src[1]]
        values = values[:, src[0], src[1]]
        if self.disjoint:
            self.values[:, dst[0], dst[1]] = values
            self.valid[:, dst[0], dst[1]] = valid
            return
        weight = np.where(valid, weights[src[0], src[1]], 0.0)
        self.total[:, dst[0], dst[1]] += weight * np.where(valid, values, 0.0)
        self.weight[:, dst[0], dst[1]] += weight

    def result(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Blended values and validity over ``box`` (inside the canvas)."""
        rows, cols = box.relative_to(self.canvas)
        if self.disjoint:
            return self.values[:, rows, cols], self.valid[:, rows, cols]
        weight = self.weight[:, rows, cols]
        valid = weight > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self.total[:, rows, cols] / weight
        return values, valid
