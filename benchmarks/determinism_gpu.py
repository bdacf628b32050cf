#!/usr/bin/env python
"""How far LDM-SR outputs on a GPU move with the batch size and the worker count (on CPU they are
bit-identical, which the tests assert). Real architecture, random weights.

    python benchmarks/determinism_gpu.py --size 256 --steps 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superres_gpu import build_model, make_input  # noqa: E402


def run(model_dir, source, output, steps, batch_size, workers, device):
    import rasterio

    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.tasks import plan_upscale

    plan = plan_upscale(
        source,
        output,
        model=str(model_dir),
        region=128,
        halo=32,
        chunk=128,
        diffusion=DiffusionOptions(steps=steps, device=device),
    )
    run_plan(
        plan,
        overwrite=True,
        workers=workers,
        runtime=RuntimeOptions(device=device, batch_size=batch_size),
    )
    with rasterio.open(output) as src:
        return src.read().astype(np.int32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_model(work / "model")
        source = work / "input.tif"
        make_input(source, args.size)
        reference = run(model_dir, source, work / "a.tif", args.steps, 1, 1, args.device)
        again = run(model_dir, source, work / "b.tif", args.steps, 1, 1, args.device)
        print(f"same settings twice: identical={np.array_equal(reference, again)}")
        for batch_size, workers in [(7, 1), (32, 2)]:
            other = run(
                model_dir, source, work / "c.tif", args.steps, batch_size, workers, args.device
            )
            diff = np.abs(other - reference)
            print(
                f"batch {batch_size}, workers {workers} vs batch 1, workers 1: "
                f"identical={np.array_equal(other, reference)}, max |diff|={diff.max()} "
                f"(uint8 levels), mean={diff.mean():.4f}, px differing={np.mean(diff > 0):.4%}"
            )


if __name__ == "__main__":
    main()
