#!/usr/bin/env python
"""Throughput of the Dask executor against the in-process (threads) executor on the same machine,
for several worker counts, and a check that every run gives the same pixels.

    python benchmarks/cluster_scaling.py --workers 1 2                      # CPU, tiny model
    python benchmarks/cluster_scaling.py --device cuda --size 1024 --steps 20 --workers 1
        # one GPU: the real architecture (random weights); threads vs a local Dask cluster

On the CPU the model is the tests' tiny LDM-SR model; on CUDA it is the real architecture of
benchmarks/configs/ldm-super-resolution-4x.json. ``wall`` includes starting the cluster and loading
the model in each worker; ``stages`` is the time from the first unit to the export's end.
Prints a table; with $OUT set (the device tool) also writes $OUT/cluster_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def run(source: Path, output: Path, model: Path, args, cluster: str, workers: int) -> dict:
    from tiler.execution.cluster import ExecutionOptions
    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.tasks import plan_upscale

    plan = plan_upscale(
        source,
        output,
        model=str(model),
        tile=args.tile,
        overlap=args.overlap,
        region=args.region,
        halo=args.halo,
        diffusion=DiffusionOptions(
            steps=args.steps,
            device=args.device,
            decode_tile=args.decode_tile,
            decode_halo=args.decode_halo,
        ),
    )
    started = time.perf_counter()
    report = run_plan(
        plan,
        overwrite=True,
        runtime=RuntimeOptions(device=args.device),
        execution=ExecutionOptions(cluster=cluster, workers=workers),
    )
    wall = time.perf_counter() - started
    stages = sum(stage.seconds for stage in report.stages[:-1])
    megapixels = plan.output.width * plan.output.height / 1e6
    return {
        "executor": cluster,
        "workers": workers,
        "wall_s": wall,
        "stages_s": stages,
        "stage_seconds": {stage.name: round(stage.seconds, 2) for stage in report.stages},
        "output_mp": megapixels,
        "mp_per_s_wall": megapixels / wall,
        "mp_per_s_stages": megapixels / stages,
        "regions": "x".join(map(str, plan.tile_grid().region_shape)),
    }


def pixels(path: Path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=192, help="input px (square)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--executors", nargs="+", default=["threads", "local"], choices=["threads", "local"]
    )
    for name in ("tile", "overlap", "region", "halo", "decode-tile", "decode-halo"):
        parser.add_argument(f"--{name}", type=int, default=None, help="default: by device")
    args = parser.parse_args()
    if args.device == "cpu":  # tiny model: small tiles, many regions
        for name, value in dict(
            tile=16, overlap=4, region=32, halo=4, decode_tile=16, decode_halo=4
        ).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    results = {"args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from superres_gpu import build_model, make_input

        if args.device == "cpu":
            from tiny_models import save_tiny_sr_model

            model = save_tiny_sr_model(work / "model")
        else:
            model = build_model(work / "model")
        source = work / "input.tif"
        make_input(source, args.size)
        reference = None
        for workers in args.workers:
            for executor in args.executors:
                output = work / f"{executor}-{workers}.tif"
                result = run(source, output, model, args, executor, workers)
                data = pixels(output)
                reference = data if reference is None else reference
                result["identical_to_first"] = bool((data == reference).all())
                results["runs"].append(result)
                print(json.dumps(result), flush=True)
    print(
        f"\n{'executor':8} {'workers':>7} {'wall s':>8} {'stages s':>8} {'MP/s wall':>9} "
        f"{'MP/s stages':>11} identical"
    )
    for r in results["runs"]:
        print(
            f"{r['executor']:8} {r['workers']:7d} {r['wall_s']:8.1f} {r['stages_s']:8.1f} "
            f"{r['mp_per_s_wall']:9.4f} {r['mp_per_s_stages']:11.4f} {r['identical_to_first']}"
        )
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "cluster_scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
