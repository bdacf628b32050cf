"""The models shipped in models/ load through the normal path and do their job on a small crop of
the bundled sample (which their training never read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from conftest import read_raster, run_tiler
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
SR_MODEL = REPO / "models" / "ldm-sr-sentinel2-4x"
INPAINT_MODEL = REPO / "models" / "ldm-inpaint-sentinel2"
SAMPLE = REPO / "samples" / "sentinel2_rgb.tif"
TRAINED_RANGE = "300,2300"


def crop(path: Path, out: Path, size: int, dtype=None) -> Path:
    with rasterio.open(path) as src:
        window = Window(200, 200, size, size)
        profile = src.profile | {
            "width": size,
            "height": size,
            "blockxsize": 16,
            "blockysize": 16,
            "transform": src.window_transform(window),
        }
        data = src.read(window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_bundled_sr_model_upscales_a_crop(tmp_path):
    small = crop(SAMPLE, tmp_path / "crop.tif", 32)
    out = tmp_path / "crop_x4.tif"
    result = run_tiler(
        "upscale",
        small,
        out,
        "--model",
        SR_MODEL,
        "--range",
        TRAINED_RANGE,
        "--sampler",
        "dpm++",
        "--steps",
        "4",
        "--back-project",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    (low, _), (high, profile) = read_raster(small), read_raster(out)
    assert high.shape == (3, 128, 128) and profile["crs"] is not None
    block_means = high.astype(float).reshape(3, 32, 4, 32, 4).mean(axis=(2, 4))
    assert np.abs(block_means - low).max() <= 2  # back-projected: blocks keep the input's values
    detail = high.astype(float) - np.repeat(np.repeat(block_means, 4, axis=1), 4, axis=2)
    assert detail.std() > 1  # not a blocky enlargement: the model adds sub-pixel structure


def test_bundled_inpaint_model_fills_a_crop(tmp_path):
    small = crop(SAMPLE, tmp_path / "crop.tif", 48)
    fill = np.zeros((1, 48, 48), np.uint8)
    fill[0, 12:30, 16:36] = 1
    with rasterio.open(small) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8"}
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(fill)
    out = tmp_path / "filled.tif"
    result = run_tiler(
        "inpaint",
        small,
        out,
        "--model",
        INPAINT_MODEL,
        "--mask",
        tmp_path / "mask.tif",
        "--range",
        TRAINED_RANGE,
        "--steps",
        "4",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    before, after = read_raster(small)[0], read_raster(out)[0]
    keep = fill[0] == 0
    assert np.array_equal(before[:, keep], after[:, keep])
    filled = after[:, ~keep].astype(float)
    # plausible scene values, not a constant or garbage
    assert 300 < filled.mean() < 2300 and filled.std() > 5
