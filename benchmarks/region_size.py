#!/usr/bin/env python
"""What the region size costs, device-independent: UNet work, assembly work and parallel balance.

    python benchmarks/region_size.py                                  # SR and inpaint/synthesis
    grids
    python benchmarks/region_size.py --sizes 5000 12500 --regions 1024 2048 --assemble-latent 2048

For each raster size (latent px; LDM-SR: input px) and region size it prints:
- overhead: UNet tile evaluations x tile area / raster area (1.0 = every latent px denoised once).
  Every region denoises all the tiles touching its extent (core + halo), so the halo and the tiles
  cut by it cost more in small regions. This ratio scales the denoise stage on any device.
- regions, and the balance on 8 GPUs: regions / (8 x rounds), rounds = ceil(regions / 8) (1.0 = no
  GPU idles in the last round; regions are the unit of distributed work).
- assemble s (``--assemble-latent``, one size): wall time of tiler's assembly of every output chunk
  from stored random region latents (3 channels, float32) in a real Zarr store on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRIDS = {  # task family -> tile, overlap, halo, chunk (latent px): tiler's defaults
    "superres": dict(tile=128, overlap=16, halo=32, chunk=256),
    "inpaint/synthesis": dict(tile=64, overlap=16, halo=32, chunk=256),
}


def overhead(size: int, tile: int, overlap: int, region: int, halo: int) -> float:
    from tiler.geometry.grid import TileGrid

    grid = TileGrid(size, size, tile, overlap, region, halo)
    return grid.computed_tile_count() * tile * tile / (size * size)


def balance(regions: int, gpus: int = 8) -> float:
    return regions / (gpus * math.ceil(regions / gpus))


def assemble_seconds(
    size: int, region: int, tile: int, overlap: int, halo: int, chunk: int
) -> float:
    """Store random extents for every region, then time ``blend_regions`` over every chunk."""
    import zarr

    from tiler.geometry.grid import TileGrid
    from tiler.workdir import arrays as engine
    from tiler.workdir.store import FAST_ZSTD, WRITE_EVERY_CHUNK

    grid = TileGrid(size, size, tile, overlap, region, halo)
    plan = types.SimpleNamespace(
        grid=types.SimpleNamespace(chunk=chunk, region=region, halo=halo), tile_grid=lambda: grid
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        group = zarr.open_group(str(Path(folder) / "w.zarr"), mode="w")
        group.create_array(
            "regions",
            compressors=FAST_ZSTD,
            config=WRITE_EVERY_CHUNK,
            **engine.regions_spec(plan, 3, 1)["regions"],
        )
        workdir = types.SimpleNamespace(
            array=lambda name: group[name], writing=contextlib.nullcontext
        )
        for r in grid.regions():
            engine.write_extent(
                workdir, grid, r.index, rng.standard_normal((3, *r.extent.shape)).astype(np.float32)
            )
        start = time.perf_counter()
        for index in np.ndindex(grid.chunk_shape(chunk)):
            engine.blend_regions(workdir, grid, grid.chunk_box(index, chunk), 1, 3)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024, 2500, 5000, 12500],
        help="raster sizes in latent px (square); 12500 = a 50,000 px LDM-SR output",
    )
    parser.add_argument("--regions", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument(
        "--assemble-latent",
        type=int,
        default=2048,
        help="latent size for the assembly timing (0: skip)",
    )
    args = parser.parse_args()
    for family, sizes in GRIDS.items():
        print(f"\n{family}: tile {sizes['tile']}, overlap {sizes['overlap']}, halo {sizes['halo']}")
        print(f"{'raster':>7} {'region':>7} {'overhead':>9} {'regions':>8} {'8-GPU balance':>14}")
        for size in args.sizes:
            for region in args.regions:
                count = math.ceil(size / region) ** 2
                factor = overhead(size, sizes["tile"], sizes["overlap"], region, sizes["halo"])
                print(f"{size:>7} {region:>7} {factor:>9.3f} {count:>8} {balance(count):>14.2f}")
        if args.assemble_latent:
            n = args.assemble_latent
            for region in args.regions:
                seconds = assemble_seconds(n, region, **sizes)
                chunks = math.ceil(n / sizes["chunk"]) ** 2
                print(
                    f"assemble {n}^2 latent, region {region}: {seconds:.2f} s for {chunks} chunks"
                )


if __name__ == "__main__":
    main()
