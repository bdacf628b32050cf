#!/usr/bin/env python
"""LDM inpainting throughput on the real CompVis architecture
(benchmarks/configs/ldm-inpainting.json: UNet 387M parameters, VQ f=4 without attention) with random
weights: the compute cost is the real one.

    python benchmarks/inpaint.py --device cpu --size 256 --steps 2 --tile 32 --overlap 8 \\
        --region 64 --halo 8 --decode-tile 32 --decode-halo 8      # small CPU configuration
    python benchmarks/inpaint.py --device cuda --size 4096 --steps 50 --mask-fraction 0.05

The mask is a set of square holes covering about ``--mask-fraction`` of the raster. Prints the
masked and total megapixels per second, the tiles computed against the whole grid's, and the UNet's
model-FLOPs utilisation where the device's peak is known. With $OUT set, writes $OUT/inpaint.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_models import (  # noqa: E402
    build_model_dir,
    diffusion_options,
    grid_options,
    measurements,
    publish,
    task_arguments,
    timed_run,
)

UNET_GFLOP_128 = 1345.5  # per forward at a 128 x 128 latent, batch 1 (from the config's notes)


def make_mask(path: Path, size: int, fraction: float, hole: int = 24):
    """Square holes of ``hole`` px on a regular grid, about ``fraction`` of the area."""
    import rasterio
    from affine import Affine

    spacing = max(hole + 1, int(round(hole / np.sqrt(fraction))))
    area = np.zeros((size, size), dtype="uint8")
    for y in range(spacing // 2, size - hole, spacing):
        for x in range(spacing // 2, size - hole, spacing):
            area[y : y + hole, x : x + hole] = 1
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10, 0, 500000, 0, -10, 4600000),
    ) as dst:
        dst.write(area[None])
    return float(area.mean())


def main():
    parser = task_arguments(__doc__.split("\n\n")[0], "input px (square)")
    parser.add_argument("--mask-fraction", type=float, default=0.05)
    args = parser.parse_args()

    from superres_gpu import make_input

    from tiler.raster.mask import MaskSpec
    from tiler.tasks.inpaint import plan_inpaint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model_dir(work / "model", "ldm-inpainting")
        source, mask = work / "input.tif", work / "mask.tif"
        make_input(source, args.size)
        fraction = make_mask(mask, args.size, args.mask_fraction)
        plan = plan_inpaint(
            source,
            work / "out.tif",
            model=str(model),
            mask=MaskSpec("file", str(mask)),
            diffusion=diffusion_options(args),
            **grid_options(args),
        )
        report, seconds = timed_run(plan, args)
    total_mp = args.size**2 / 1e6
    result = measurements(plan, args, report, seconds, plan.mask.tiles_touched, UNET_GFLOP_128)
    publish(
        result
        | {
            "mask_fraction": fraction,
            "tiles_whole_grid": plan.tile_grid().computed_tile_count(),
            "total_mp_per_s": total_mp / seconds,
            "masked_mp_per_s": total_mp * fraction / seconds,
        },
        "inpaint",
    )


if __name__ == "__main__":
    main()
