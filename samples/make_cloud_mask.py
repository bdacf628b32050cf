#!/usr/bin/env python
"""Build samples/sentinel2_rgb_clouds.tif: a synthetic cloud mask for sentinel2_rgb.tif.

The sample scene is cloud-free, so the inpainting examples get clouds drawn by tiler's own cloud
generator (the one `tiler train inpaint` trains on): smooth noise thresholded into a few soft
blobs. Seed 45 gives four clouds and two specks over about 12% of the scene.

Usage (from the repository root):
    python samples/make_cloud_mask.py [samples/sentinel2_rgb.tif] [out.tif]

Requires numpy, rasterio and tiler (this repository, installed).
"""

import sys

import numpy as np
import rasterio

from tiler.train.degrade import _clouds

SEED = 45


def main(sample_path, out_path):
    with rasterio.open(sample_path) as src:
        assert src.width == src.height, "the cloud generator draws squares"
        size, crs, transform = src.width, src.crs, src.transform
    mask = _clouds(np.random.default_rng(SEED), size).astype(np.uint8)  # 1 = cloud to fill
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="DEFLATE",
        photometric="MINISBLACK",
    )
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(mask, 1)
        dst.set_band_description(1, "cloud mask: 1 = cloud to fill, 0 = clear")
    print(f"{out_path}: {size} x {size}, {mask.mean():.1%} cloud")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        args[0] if args else "samples/sentinel2_rgb.tif",
        args[1] if len(args) > 1 else "samples/sentinel2_rgb_clouds.tif",
    )
