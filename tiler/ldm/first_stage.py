"""Tiled first-stage passes: decode (latent -> pixels) or encode (pixels -> latent) of any latent
box in fixed-shape windows, so memory stays bounded whatever the box (an output chunk, a region's
canvas).

The latent box is cut into decode tiles of ``tile`` latent px on a grid anchored at (0, 0). Each
tile is coded from a window grown by ``halo`` latent px on every side (reflected past the raster
edge) and only its core is kept, so every px comes from exactly one window and no window is coded
twice. The SR decoder has a global attention in its mid block, so a window's
result differs from a whole-canvas decode, most near its edges; the halo keeps the core's error
small (``benchmarks/superres_gpu.py`` measures it against the halo). A first stage without
attention, given shared GroupNorm statistics (tiler/ldm/norm_stats.py), is exact with a halo
covering its reach (``benchmarks/tiled_decode_error.py``). The windows of a chunk depend
only on the plan; how many are decoded per call is the device's choice (the decoder is made batch
invariant on CPU).
"""

from __future__ import annotations

import numpy as np

from tiler.geometry.grid import Box, Span


def decode_tiles(core: Box, tile: int) -> list[Box]:
    """The decode tiles (multiples of ``tile``) that cover ``core``, clipped to it."""

    def spans(span: Span) -> list[Span]:
        starts = range(span.start // tile * tile, span.stop, tile)
        return [Span(max(start, span.start), min(start + tile, span.stop)) for start in starts]

    return [Box(y, x) for y in spans(core.y) for x in spans(core.x)]


def tiled_pass(
    code_batch,
    read,
    core: Box,
    tile: int,
    halo: int,
    scale: int,
    channels: int,
    batch_size: int = 4,
    wanted=None,
) -> np.ndarray:
    """The result (channels, h*scale, w*scale) of a first-stage pass over latent box ``core``.

    ``read(box)`` gives the pass's input over latent ``box`` (reflected past the edges): the
    blended latent to decode, or the pixels to encode; ``code_batch(stacked inputs)`` runs the
    coder and returns ``scale`` px per latent px (decode: the factor f; encode: 1). Windows have
    one shape (tile + 2 * halo) wherever they fall, like UNet tiles. ``wanted(piece)``, if given,
    picks the decode tiles to code; the others' px are left NaN (inpainting decodes only the tiles
    holding masked pixels)."""
    result = np.full((channels, core.y.size * scale, core.x.size * scale), np.nan, dtype=np.float32)
    tiles = [piece for piece in decode_tiles(core, tile) if wanted is None or wanted(piece)]
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        windows = [_window(piece, tile, halo) for piece in batch]
        coded = code_batch(np.stack([read(window) for window in windows]))
        for piece, window, values in zip(batch, windows, coded):
            rows, cols = piece.scale(scale).relative_to(window.scale(scale))
            out_rows, out_cols = piece.scale(scale).relative_to(core.scale(scale))
            result[:, out_rows, out_cols] = values[:, rows, cols]
    return result


def _window(piece: Box, tile: int, halo: int) -> Box:
    """The fixed-shape window of the grid tile holding ``piece``."""
    y0 = piece.y.start // tile * tile - halo
    x0 = piece.x.start // tile * tile - halo
    size = tile + 2 * halo
    return Box(Span(y0, y0 + size), Span(x0, x0 + size))
