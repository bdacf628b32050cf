#!/usr/bin/env python
"""LDM semantic-synthesis throughput on the real CompVis architecture
(benchmarks/configs/ldm-semantic-synthesis.json: UNet 215M parameters over a 3 + 3 channel latent,
VQ f=4, 182 COCO-Stuff classes) with random weights: the compute cost is the real one.

    python benchmarks/synthesis.py --device cpu --size 256 --steps 2 --tile 32 --overlap 8 \\
        --region 64 --halo 8 --decode-tile 32 --decode-halo 8      # small CPU configuration
    python benchmarks/synthesis.py --device cuda --size 4096 --steps 50

The labels are land-cover-like patches of random classes. Prints output megapixels per second, the
stage times and the UNet's model-FLOPs utilisation where the device's peak is known. With $OUT set,
writes $OUT/synthesis.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

UNET_GFLOP_128 = 833.7  # per forward at a 128 x 128 latent, batch 1 (from the config's notes)


def make_labels(path: Path, size: int, classes: int, patch: int = 37):
    """Patches of ``patch`` px, each a random class, as uint8 class ids."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    cells = -(-size // patch)
    grid = rng.integers(0, classes, size=(cells, cells), dtype=np.uint8)
    labels = np.repeat(np.repeat(grid, patch, axis=0), patch, axis=1)[:size, :size]
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
        dst.write(labels[None])


def main():
    from real_models import (
        build_model_dir,
        diffusion_options,
        grid_options,
        measurements,
        publish,
        task_arguments,
        timed_run,
    )

    from tiler.tasks.synthesis import plan_synthesize

    args = task_arguments(__doc__.split("\n\n")[0], "label px (square)").parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model_dir(work / "model", "ldm-semantic-synthesis")
        labels = work / "labels.tif"
        make_labels(labels, args.size, classes=182)
        plan = plan_synthesize(
            labels,
            work / "out.tif",
            model=str(model),
            diffusion=diffusion_options(args),
            **grid_options(args),
        )
        report, seconds = timed_run(plan, args)
    result = measurements(
        plan, args, report, seconds, plan.tile_grid().computed_tile_count(), UNET_GFLOP_128
    )
    publish(result | {"output_mp_per_s": args.size**2 / 1e6 / seconds}, "synthesis")


if __name__ == "__main__":
    main()
