"""A side-by-side PNG to judge an upscale by eye: the input enlarged with nearest neighbour |
bicubic | the LDM, over one window of the input, with one contrast stretch for all panels.

    python samples/side_by_side.py INPUT BICUBIC LDM OUT.png [--window COL,ROW,WIDTH,HEIGHT]

INPUT is the low-resolution raster, BICUBIC and LDM its upscaled versions (same bands, scale from
their sizes). The stretch is the input window's 1/99 percentiles over all bands (colour kept).
"""

from __future__ import annotations

import argparse

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.windows import Window

LABEL_HEIGHT = 22


def read(path: str, window: Window, scale: int) -> np.ndarray:
    with rasterio.open(path) as src:
        big = Window(
            window.col_off * scale,
            window.row_off * scale,
            window.width * scale,
            window.height * scale,
        )
        return src.read(window=big).astype(np.float64)[:3]


def to_rgb(data: np.ndarray, low: float, high: float) -> np.ndarray:
    unit = np.clip((data - low) / (high - low), 0, 1)
    if unit.shape[0] == 1:
        unit = np.repeat(unit, 3, axis=0)
    return (unit.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("bicubic")
    parser.add_argument("ldm")
    parser.add_argument("out")
    parser.add_argument("--window", default=None, help="COL,ROW,WIDTH,HEIGHT in input px [all]")
    args = parser.parse_args(argv)
    with rasterio.open(args.input) as src, rasterio.open(args.ldm) as ldm:
        scale = ldm.width // src.width
        col, row, width, height = (
            (int(v) for v in args.window.split(","))
            if args.window
            else (0, 0, src.width, src.height)
        )
    window = Window(col, row, width, height)
    low_res = read(args.input, window, 1)
    nearest = np.repeat(np.repeat(low_res, scale, axis=1), scale, axis=2)
    low, high = np.percentile(low_res, (1, 99))
    panels = [
        ("input (nearest)", nearest),
        ("bicubic", read(args.bicubic, window, scale)),
        ("LDM", read(args.ldm, window, scale)),
    ]
    tile_w, tile_h = width * scale, height * scale
    canvas = Image.new("RGB", (tile_w * 3 + 8, tile_h + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (label, data) in enumerate(panels):
        x = index * (tile_w + 4)
        canvas.paste(Image.fromarray(to_rgb(data, low, high)), (x, LABEL_HEIGHT))
        draw.text((x + 4, 4), label, fill="black")
    canvas.save(args.out)
    print(f"wrote {args.out} ({canvas.width} x {canvas.height})")


if __name__ == "__main__":
    main()
