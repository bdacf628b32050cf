"""The seam heat map: every boundary segment of an output drawn in the colour of its seam index
(green invisible, red steps, blue smoothed), as a PNG a person opens to see where seams are."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tiler.errors import OutputError, first_line

HEATMAP_SIDE = 1024  # longest side of the heat map PNG

BACKGROUND = (48, 48, 48)

NO_DATA_COLOUR = (128, 128, 128)


# --- heat map
# --------------------------------------------------------------------------------------
def ratio_colours(ratios) -> np.ndarray:
    """RGB uint8 for each ratio, log scale: blue at 1/2 or below, white at 1, red at 2 or above;
    grey where the ratio is unknown (nan)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.log2(ratios), -1.0, 1.0)
    fade = 255.0 * (1.0 - np.abs(np.nan_to_num(t)))  # the other two channels
    colours = np.empty(ratios.shape + (3,))
    colours[..., 0] = np.where(t > 0, 255.0, fade)
    colours[..., 1] = fade
    colours[..., 2] = np.where(t < 0, 255.0, fade)
    colours[np.isnan(t)] = NO_DATA_COLOUR
    return np.round(colours).astype(np.uint8)


def heatmap_size(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of the heat map: the output's footprint, longest side <= HEATMAP_SIDE."""
    factor = min(1.0, HEATMAP_SIDE / max(width, height))
    return (
        max(1, min(HEATMAP_SIDE, round(width * factor))),
        max(1, min(HEATMAP_SIDE, round(height * factor))),
    )


def render_heatmap(width: int, height: int, table) -> np.ndarray:
    """The heat map as a (3, rows, cols) uint8 array: the output's footprint scaled down, each
    segment a 1 px line in its ratio's colour; where lines meet, the strongest seam shows."""
    cols, rows = heatmap_size(width, height)
    fx, fy = cols / width, rows / height
    vertical = table.vertical
    # the segment's pixels in the heat map: across = one column/row, along = a run of rows/columns
    across = np.where(vertical, table.position * fx, table.position * fy).astype(np.int64)
    across = np.minimum(across, np.where(vertical, cols, rows) - 1)
    scale_along = np.where(vertical, fy, fx)
    limit = np.where(vertical, rows, cols)
    first = np.minimum(limit - 1, (table.start * scale_along).astype(np.int64))
    last = np.maximum(
        first + 1, np.minimum(limit, np.ceil(table.stop * scale_along).astype(np.int64))
    )
    # painter's rule without ordering races: each pixel keeps its highest-ranked segment
    strength = table.strength
    rank = np.empty(len(strength), dtype=np.int64)
    rank[np.argsort(strength, kind="stable")] = np.arange(len(strength))
    winner = np.full(rows * cols, -1, dtype=np.int64)
    for lo in range(0, len(strength), 65536):  # bounded memory for millions of segments
        part = slice(lo, lo + 65536)
        runs = last[part] - first[part]
        owner = np.repeat(np.arange(len(runs)), runs)
        along = first[part][owner] + np.arange(runs.sum()) - np.repeat(np.cumsum(runs) - runs, runs)
        is_vertical = vertical[part][owner]
        r = np.where(is_vertical, along, across[part][owner])
        c = np.where(is_vertical, across[part][owner], along)
        np.maximum.at(winner, r * cols + c, rank[part][owner])
    image = np.empty((rows * cols, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    drawn = winner >= 0
    by_rank = np.argsort(rank)  # rank -> segment
    image[drawn] = ratio_colours(table.ratio[by_rank[winner[drawn]]])
    return np.ascontiguousarray(image.reshape(rows, cols, 3).transpose(2, 0, 1))


def write_heatmap(path, width: int, height: int, table) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    image = render_heatmap(width, height, table)
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; expected a PNG file path for the heat map")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(
                path,
                "w",
                driver="PNG",
                width=image.shape[2],
                height=image.shape[1],
                count=3,
                dtype="uint8",
            ) as dst:
                dst.write(image)
    except RasterioIOError as exc:
        raise OutputError(f"{path}: cannot write the heat map ({first_line(exc)})") from None
