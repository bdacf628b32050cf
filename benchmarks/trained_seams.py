"""The engine re-measured on trained weights: seam index per boundary kind (tile, region, decode;
`tiler qa`) and the difference to one whole-canvas run, for each overlap, decode halo and decode
statistics setting, on a held-out area (the demo sample, never read in training).

    python benchmarks/trained_seams.py --model models/ldm-sr-sentinel2-4x [--crop 256] \
        [--json benchmarks/results/trained_seams_cpu.json]

Every run is the real `tiler upscale` in a subprocess with small tiles and regions so that the
crop holds many boundaries of each kind (tile 64, region 128, decode tile 64, with their
defaults' halos unless swept); the whole-canvas run has one tile, one region and one decode
window covering the crop. PSNR (value range mapped to [0, 1]) is against that whole run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "--tile": 64,
    "--overlap": 16,
    "--region": 128,
    "--halo": 32,
    "--decode-tile": 64,
    "--decode-halo": 16,
    "--decode-norm": "window",
}
SWEEPS = [
    ("tile", "--tile", (32, 64, 128)),
    ("overlap", "--overlap", (0, 8, 16)),
    ("decode halo", "--decode-halo", (0, 4, 8, 16, 32)),
    ("decode statistics", "--decode-norm", ("window", "shared")),
    ("back-projection", "--decode-halo", (0,)),
]  # with --no-back-project: what it hides


def crop(sample: Path, size: int, out: Path) -> Path:
    with rasterio.open(sample) as src:
        window = Window(0, 0, size, size)
        profile = src.profile | {
            "width": size,
            "height": size,
            "transform": src.window_transform(window),
        }
        data = src.read(window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def upscale(src: Path, out: Path, model: str, options: dict, common: list[str]) -> float:
    args = [a for key, value in options.items() for a in (key, str(value))]
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tiler",
            "upscale",
            str(src),
            str(out),
            "--model",
            model,
            *common,
            *args,
            "--overwrite",
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"tiler upscale failed: {result.stderr.strip()}")
    return time.monotonic() - started


def seams(out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tiler", "qa", str(out), "--json", "--overwrite"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["index"]


def psnr(a: Path, b: Path, low: float, high: float) -> float:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        error = ((x.read().astype(float) - y.read().astype(float)) / (high - low)) ** 2
    return float(10 * np.log10(1 / max(error.mean(), 1e-12)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sample", default=str(ROOT / "samples" / "sentinel2_rgb.tif"))
    parser.add_argument("--crop", type=int, default=256, help="input px of the sample's corner")
    parser.add_argument("--range", default="300,2300")
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    low, high = (float(v) for v in args.range.split(","))
    common = [
        "--range",
        args.range,
        "--sampler",
        args.sampler,
        "--steps",
        str(args.steps),
        "--device",
        "cpu",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        src = crop(Path(args.sample), args.crop, tmp / "crop.tif")
        whole = tmp / "whole.tif"
        latent = args.crop  # the SR latent grid is the input grid
        whole_options = BASE | {
            "--tile": latent,
            "--region": latent,
            "--overlap": 0,
            "--halo": 0,
            "--decode-tile": latent,
            "--decode-halo": 0,
        }
        seconds = upscale(src, whole, args.model, whole_options, common)
        rows.append({"sweep": "whole canvas", "value": "-", "seconds": seconds, **seams(whole)})
        for sweep, option, values in SWEEPS:
            for value in values:
                out = tmp / "tiled.tif"
                flags = common + (["--no-back-project"] if sweep == "back-projection" else [])
                seconds = upscale(src, out, args.model, BASE | {option: value}, flags)
                rows.append(
                    {
                        "sweep": sweep,
                        "value": value,
                        "seconds": seconds,
                        **seams(out),
                        "psnr_vs_whole": psnr(out, whole, low, high),
                    }
                )
                print(rows[-1], flush=True)
    keys = ["sweep", "value", "tile", "region", "decode", "all", "psnr_vs_whole", "seconds"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print(
            "| "
            + " | ".join(
                f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                for k in keys
            )
            + " |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
