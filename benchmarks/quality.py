"""Quality of the bundled (or any) LDM models on the held-out areas of the Sentinel-2 scene.

Ground truth: the scene's 10 m px over each held-out area (training never read them). Input: their
4 x 4 area average (float32, georeferenced at 40 m), as a coarser sensor would integrate them.

Super-resolution, per method (bicubic, lanczos, the LDM with each sampler setting):
  PSNR and SSIM against the ground truth, on the value range mapped to [0, 1] (--range);
  detail ratio: power of (output - its 4 x 4 block mean) over the same of the ground truth
  (bicubic is far below 1; 1 = as much fine detail as the truth, right or wrong);
  consistency: PSNR of the output's 4 x 4 block means against the input.
  The first stage's own reconstruction PSNR (encode, quantize, decode the truth) bounds the LDM.
Inpainting: random cloud masks over the truth; PSNR and SSIM inside the mask of the LDM and of
GDAL's FillNodata (rasterio.fill.fillnodata) against the truth.

Every tiler run is the real command in a subprocess. Prints a markdown table; --json writes it.

    python training/prepare_data.py             # training-data/ (once)
    python benchmarks/quality.py --sr-model models/ldm-sr-sentinel2-4x \
        --inpaint-model models/ldm-inpaint-sentinel2 --json benchmarks/results/quality_cpu.json
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
from rasterio.windows import from_bounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
from prepare_data import HOLD_OUT, S2_NAME  # noqa: E402

sys.path.insert(0, str(ROOT))
from tiler.geometry import back_projection  # noqa: E402

F = 4
DEFAULT_SETTINGS = "ddim:20,ddim:50,dpm++:5,dpm++:10,dpm++:20"


def read_truth(scene: Path, bounds) -> tuple[np.ndarray, dict]:
    with rasterio.open(scene) as src:
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(window=window).astype(np.float64)
        profile = {"crs": src.crs, "transform": src.window_transform(window)}
    h, w = data.shape[1] // F * F, data.shape[2] // F * F
    return data[:, :h, :w], profile


def block_mean(image: np.ndarray) -> np.ndarray:
    return back_projection.block_mean(image, F)


def write(path: Path, data: np.ndarray, crs, transform, dtype="float32") -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data.astype(dtype))
    return path


def tiler(*args) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tiler", *map(str, args), "-q", "--overwrite"],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise SystemExit(f"tiler {' '.join(map(str, args))} failed: {result.stderr.strip()}")
    return time.monotonic() - started


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, where=None) -> float:
    error = (a - b) ** 2
    mse = error[:, where].mean() if where is not None else error.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray, where=None) -> float:
    from skimage.metrics import structural_similarity

    value, full = structural_similarity(a, b, data_range=1.0, channel_axis=0, full=True)
    return float(full[:, where].mean()) if where is not None else float(value)


def detail(image: np.ndarray) -> float:
    coarse = np.repeat(np.repeat(block_mean(image), F, axis=1), F, axis=2)
    return float(((image - coarse) ** 2).mean())


def sr_scores(out: np.ndarray, truth: np.ndarray, low: np.ndarray) -> dict:
    return {
        "psnr": psnr(out, truth),
        "ssim": ssim(out, truth),
        "detail_ratio": detail(out) / detail(truth),
        "consistency_psnr": psnr(block_mean(out), low),
    }


def first_stage_psnr(model: Path, truth: np.ndarray) -> float:
    import torch
    from diffusers import VQModel

    vq = VQModel.from_pretrained(model / "vqvae").eval()
    with torch.inference_mode():
        pixels = torch.from_numpy((truth * 2 - 1).astype(np.float32))[None]
        decoded = vq.decode(vq.encode(pixels).latents).sample[0].numpy()
    return psnr((decoded + 1) / 2, truth)


def superres(args, area: str, truth_raw: np.ndarray, profile: dict, tmp: Path) -> list[dict]:
    unit = lambda values: (values - args.low) / (args.high - args.low)  # noqa: E731
    low_raw = block_mean(truth_raw)
    transform = profile["transform"] * rasterio.Affine.scale(F)
    lowres = write(tmp / f"{area}_low.tif", low_raw, profile["crs"], transform)
    truth, low = unit(truth_raw), unit(low_raw)
    rows = []
    for method in ("bicubic", "lanczos"):
        out = tmp / f"{area}_{method}.tif"
        seconds = tiler("upscale", lowres, out, "--model", method)
        rows.append(
            {
                "area": area,
                "method": method,
                "seconds": seconds,
                **sr_scores(unit(read(out)), truth, low),
            }
        )
    if args.sr_model:
        rows.append(
            {
                "area": area,
                "method": "first stage (encode+decode truth)",
                "psnr": first_stage_psnr(Path(args.sr_model), truth),
            }
        )
        for setting in args.settings.split(","):
            sampler, steps = setting.split(":")
            for back_project in args.back_project:
                out = tmp / f"{area}_ldm.tif"
                flag = "--back-project" if back_project else "--no-back-project"
                seconds = tiler(
                    "upscale",
                    lowres,
                    out,
                    "--model",
                    args.sr_model,
                    "--sampler",
                    sampler,
                    "--steps",
                    steps,
                    "--range",
                    f"{args.low:g},{args.high:g}",
                    flag,
                    "--device",
                    "cpu",
                )
                rows.append(
                    {
                        "area": area,
                        "method": f"LDM {sampler} {steps}" + (" +bp" if back_project else ""),
                        "seconds": seconds,
                        **sr_scores(unit(read(out)), truth, low),
                    }
                )
    return rows


def inpaint(args, area: str, truth_raw: np.ndarray, profile: dict, tmp: Path) -> list[dict]:
    from rasterio.fill import fillnodata

    unit = lambda values: (values - args.low) / (args.high - args.low)  # noqa: E731
    fill = cloud_cover(truth_raw.shape[1:], args.cloud_size)
    size = max(truth_raw.shape[1:])
    scene = write(
        tmp / f"{area}_scene.tif", truth_raw, profile["crs"], profile["transform"], "uint16"
    )
    mask = write(
        tmp / f"{area}_mask.tif", fill[None], profile["crs"], profile["transform"], "uint8"
    )
    out = tmp / f"{area}_filled.tif"
    seconds = tiler(
        "inpaint",
        scene,
        out,
        "--model",
        args.inpaint_model,
        "--mask",
        mask,
        "--steps",
        str(args.inpaint_steps),
        "--range",
        f"{args.low:g},{args.high:g}",
        "--device",
        "cpu",
    )
    ldm = unit(read(out))
    gdal = np.stack(
        [fillnodata(band.copy(), mask=~fill, max_search_distance=size) for band in truth_raw]
    )
    truth = unit(truth_raw)
    cover = float(fill.mean())
    clouds = f" (clouds {args.cloud_size} px)" if args.cloud_size else ""
    return [
        {
            "area": area,
            "method": "LDM inpaint" + clouds,
            "seconds": seconds,
            "mask_cover": cover,
            "psnr_masked": psnr(ldm, truth, fill),
            "ssim_masked": ssim(ldm, truth, fill),
        },
        {
            "area": area,
            "method": "GDAL FillNodata" + clouds,
            "mask_cover": cover,
            "psnr_masked": psnr(unit(gdal), truth, fill),
            "ssim_masked": ssim(unit(gdal), truth, fill),
        },
    ]


def cloud_cover(shape: tuple[int, int], cloud_size: int | None) -> np.ndarray:
    """The benchmark's mask: tiler train's cloud masks (clouds, stripes, rectangles), one per
    square of ``cloud_size`` px (None: one over the whole area), seeded."""
    sys.path.insert(0, str(ROOT))
    from tiler.train.degrade import cloud_masks

    size = cloud_size or min(shape)
    rng = np.random.default_rng(0)
    fill = np.zeros(shape, bool)
    for y in range(0, shape[0] - size + 1, size):
        for x in range(0, shape[1] - size + 1, size):
            fill[y : y + size, x : x + size] = cloud_masks(rng, 1, size)[0]
    return fill


def table(rows: list[dict]) -> str:
    keys = [
        k
        for k in (
            "area",
            "method",
            "psnr",
            "ssim",
            "detail_ratio",
            "consistency_psnr",
            "mask_cover",
            "psnr_masked",
            "ssim_masked",
            "seconds",
        )
        if any(k in r for r in rows)
    ]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [
            f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sr-model", help="LDM super-resolution model folder")
    parser.add_argument("--inpaint-model", help="LDM inpainting model folder")
    parser.add_argument(
        "--data", default=str(ROOT / "training-data"), help="prepare_data.py's folder"
    )
    parser.add_argument(
        "--range", default="300,2300", help="value range mapped to [0, 1] (and --range of tiler)"
    )
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="LDM sampler:steps list")
    parser.add_argument("--back-project", default="both", choices=["on", "off", "both"])
    parser.add_argument("--inpaint-steps", type=int, default=50)
    parser.add_argument(
        "--cloud-size",
        type=int,
        help="masks per square of this many px (the "
        "training windows': 128) [one mask over each area]",
    )
    parser.add_argument("--no-sr", action="store_true", help="skip super-resolution")
    parser.add_argument("--areas", default=",".join(HOLD_OUT), help="held-out areas to measure")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="write the table into each model's README.md (Quality section)",
    )
    args = parser.parse_args(argv)
    args.low, args.high = (float(v) for v in args.range.split(","))
    args.back_project = {"on": [True], "off": [False], "both": [False, True]}[args.back_project]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for area in args.areas.split(","):
            truth, profile = read_truth(Path(args.data) / S2_NAME, HOLD_OUT[area])
            if not args.no_sr:
                rows += superres(args, area.replace(" ", "-"), truth, profile, Path(folder))
            if args.inpaint_model:
                rows += inpaint(args, area.replace(" ", "-"), truth, profile, Path(folder))
            print(table([r for r in rows if r["area"] == area.replace(" ", "-")]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.update_cards:
        command = "python benchmarks/quality.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        sr_rows = [r for r in rows if "psnr" in r]
        inpaint_rows = [r for r in rows if "psnr_masked" in r]
        for model, picked in ((args.sr_model, sr_rows), (args.inpaint_model, inpaint_rows)):
            if model and picked:
                update_card(Path(model) / "README.md", picked, command)


def update_card(card: Path, rows: list[dict], command: str) -> None:
    """Replace the card's Quality section with these rows."""
    text = card.read_text()
    head = text.split("## Quality")[0]
    card.write_text(
        head + "## Quality\n\nOn the held-out areas of the Sentinel-2 scene (never read "
        "in training), value range mapped to [0, 1]; measured with\n\n```sh\n"
        + command
        + "\n```\n\n"
        + table(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
