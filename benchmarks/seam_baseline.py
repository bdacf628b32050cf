#!/usr/bin/env python
"""Seams: tiler's fused lockstep sampling vs independent tiles with pixel feathering.

The baseline, ``independent_tiles_feathered``, is what peers do: every tile of the grid is denoised
ALONE (its own fresh scheduler, its own UNet context), decoded ALONE by the VQ decoder, and the
decoded tiles are feathered into the output with partition-of-unity pixel weights. It is built from
tiler's own pieces (the plan, the normalisation of ``SuperResolutionTask.condition``, the sampler
``denoise_canvas`` with a one-tile canvas, which also gives each tile the keyed noise of its own
window, ``ModelRunner.decode_latents``, ``tile_weights``), so that ONLY the sampling strategy
differs from a tiler run with the same model, seed, tile and overlap.

Usage (from the repository root, with the project's venv active):

    python benchmarks/seam_baseline.py                        # tiny random model, synthetic input
    python benchmarks/seam_baseline.py --model DIR --input IN.tif --steps 50 --tile 64 --overlap 16

It runs ``tiler upscale`` (``run_plan``) and the baseline on the same input and model, and prints
the seam index (1 = invisible) and strength (|ln index|, 0 = invisible) on the tile boundaries of
each, and the wall time. All outputs carry a TILER_PLAN, so ``tiler qa OUT`` reads their tile
boundaries too (``--keep DIR`` keeps them).

A third row is a diagnostic: tiles still denoised independently, but their LATENTS feathered and
decoded once like tiler does. It separates the two causes of the baseline's seams: independent
sampling, and decoding each tile alone (the decoder's own edge effects at every tile edge). With the
tiny random model the second dominates: its latent-feathered row scores like tiler.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunResult:
    name: str
    output: str
    seconds: float
    index: float  # seam index on tile boundaries (1 = invisible)
    strength: float  # |ln index|
    report: object  # the full tiler.quality.SeamReport


def _whole_raster_region(input_path) -> int:
    from tiler.raster.sources import describe

    info = describe(input_path)
    return max(info.width, info.height)


def independent_tiles_feathered(
    input_path,
    output_path,
    model_dir,
    tile: int,
    overlap: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    eta: float = 0.0,
    sampler: str = "ddim",
    bands: str | None = None,
    feather: str = "pixels",
    decode_halo: int | None = None,
):
    """Upscale ``input_path`` 4x the naive way and write a GeoTIFF to ``output_path``; return its
    plan.

    Every tile of the tile grid (region = the whole raster, halo 0) is denoised alone with a fresh
    scheduler and decoded alone; the decoded tiles are feathered with ``tile_weights(tile * 4,
    overlap * 4)`` normalised by their sum. The output has the input's georeferencing (scaled) and a
    TILER_PLAN item whose grid holds ``tile``/``overlap``, so ``seam_report(output_path)`` and
    ``tiler qa`` measure the same tile boundaries as for a tiler run. The whole input is read into
    memory: this is for small benchmark rasters.

    ``feather="latents"`` is a diagnostic variant that isolates the sampling strategy: the tiles are
    still denoised alone, but their latents are feathered (``tile_weights(tile, overlap)``) and the
    blended latent is decoded once, by tiler's own decoder path (one decode tile covering the
    raster,
    ``decode_halo`` latent px reflected past its edges, default tiler's)."""
    import rasterio
    import torch
    from affine import Affine
    from rasterio.crs import CRS

    from tiler.execution.export import PLAN_TAG
    from tiler.geometry.grid import Box, Span
    from tiler.geometry.weights import tile_weights
    from tiler.ldm.options import DEFAULTS, DiffusionOptions, RuntimeOptions
    from tiler.ldm.runner import ModelRunner
    from tiler.ldm.sampling import SamplingOptions, denoise_canvas
    from tiler.raster.sources import SourceReader, describe
    from tiler.raster.values import to_pixels
    from tiler.tasks import plan_upscale
    from tiler.tasks.superres import SuperResolutionTask

    if feather not in ("pixels", "latents"):
        raise ValueError(f"feather must be 'pixels' or 'latents', got {feather!r}")
    # 1. the same plan a tiler run would have (value range, scale, georeferencing), one region
    region = _whole_raster_region(input_path)
    options = DiffusionOptions(steps=steps, eta=eta, seed=seed, sampler=sampler, device=device)
    plan = plan_upscale(
        input_path,
        output_path,
        model=str(model_dir),
        bands=bands,
        tile=tile,
        overlap=overlap,
        region=region,
        halo=0,
        diffusion=options,
    )
    scale = plan.scale
    model = ModelRunner.load(plan, RuntimeOptions(device=device))
    reader = SourceReader(describe(plan.input.path), plan.bands)
    try:
        # store=None: only the task's pixel <-> model-space conversions are used
        task = SuperResolutionTask(plan, None, reader, model, batch_size=1)
        grid = plan.tile_grid()
        whole = grid.region_at(0, 0)  # its tiles: every tile of the grid
        sampling = SamplingOptions(
            steps=steps, eta=plan.diffusion.eta, seed=seed, batch_size=1, overlap=overlap
        )
        f = scale if feather == "pixels" else 1  # feathering grid: output px or latent px
        weights = tile_weights(tile * f, overlap * f)
        canvas = whole.canvas  # tiles past the raster's end read reflected input, as in tiler
        channels = model.image_channels if feather == "pixels" else model.latent_channels
        total = np.zeros((channels, canvas.y.size * f, canvas.x.size * f), dtype=np.float64)
        weight_sum = np.zeros(total.shape[1:], dtype=np.float64)

        # 2. each tile alone: its own scheduler and noise window, its own decode
        for box in whole.tiles:
            with torch.inference_mode():
                condition = model.to_device(task.condition(box))
                latent = (
                    denoise_canvas(
                        model.unet_call,
                        model.new_scheduler(),
                        condition,
                        box,
                        (box,),
                        model.latent_channels,
                        sampling,
                    )
                    .float()
                    .cpu()
                    .numpy()
                )
            values = model.decode_latents(latent[None])[0] if feather == "pixels" else latent
            rows, cols = box.scale(f).relative_to(canvas.scale(f))
            total[:, rows, cols] += values * weights
            weight_sum[rows, cols] += weights

        # 3. feather: partition of unity, then back to raster units
        raster = Box(Span(0, plan.input.height), Span(0, plan.input.width))
        rows, cols = raster.scale(f).relative_to(canvas.scale(f))
        blended = (total / weight_sum)[:, rows, cols]
        if feather == "latents":
            blended = _decode_whole(
                model,
                blended.astype(np.float32),
                scale,
                DEFAULTS["decode_halo"] if decode_halo is None else decode_halo,
            )
        values = task.denormalise(blended)
        output = to_pixels(
            values, task.output_validity(raster), plan.output.dtype, plan.output_fill
        )
    finally:
        reader.close()

    # 4. a GeoTIFF like tiler's, with the plan that describes its tile geometry
    out = plan.output
    profile = dict(
        driver="GTiff",
        width=out.width,
        height=out.height,
        count=out.count,
        dtype=out.dtype,
        nodata=out.nodata,
    )
    if out.transform is not None:
        profile["transform"] = Affine(*out.transform)
        if plan.input.crs_wkt:
            profile["crs"] = CRS.from_wkt(plan.input.crs_wkt)
    with rasterio.open(output_path, "w", **profile) as dst:
        dst.update_tags(**{PLAN_TAG: plan.model_dump_json()})
        dst.write(output)
    return plan


def _decode_whole(model, latent: np.ndarray, scale: int, halo: int) -> np.ndarray:
    """Decode a whole (C, h, w) latent as one decode tile with ``halo`` px reflected around it
    (tiler's ``tiled_pass``)."""
    from tiler.geometry.grid import Box, Span
    from tiler.ldm.first_stage import tiled_pass
    from tiler.raster.sources import read_reflected

    height, width = latent.shape[1:]

    def read_latent(box):
        return read_reflected(lambda rows, cols: latent[:, rows, cols], box, height, width)

    core = Box(Span(0, height), Span(0, width))
    return tiled_pass(
        model.decode_latents,
        read_latent,
        core,
        max(height, width),
        halo,
        scale,
        model.image_channels,
    )


def tiler_fused(
    input_path,
    output_path,
    model_dir,
    tile: int,
    overlap: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    eta: float = 0.0,
    sampler: str = "ddim",
    region: int | None = None,
    halo: int | None = None,
    decode_tile: int | None = None,
    decode_halo: int | None = None,
    bands: str | None = None,
    workers: int | None = None,
):
    """The real ``tiler upscale`` (``plan_upscale`` + ``run_plan``) with the same tile geometry.

    Defaults: one region covering the raster (``halo`` = the overlap, irrelevant then) and one
    decode tile covering it too (``decode_tile`` = raster size, tiler's default ``decode_halo``), so
    the decoder's own tiles add no boundaries of their own; pass ``region`` / ``decode_tile`` to
    measure those as well. Keep ``decode_halo`` > 0: the decoder's edge effects at the raster's
    edges would otherwise land on the seam report's reference lines near them (with the tiny model
    tiler's index
    then drops to about 0.5 with invisible seams)."""
    import torch

    from tiler.execution.run import run_plan
    from tiler.ldm.options import DiffusionOptions, RuntimeOptions
    from tiler.tasks import plan_upscale

    whole = _whole_raster_region(input_path)
    options = DiffusionOptions(
        steps=steps,
        eta=eta,
        seed=seed,
        sampler=sampler,
        device=device,
        decode_tile=decode_tile or whole,
        decode_halo=decode_halo,
        back_project=False,
    )  # the sampler's seams, as the baseline's
    plan = plan_upscale(
        input_path,
        output_path,
        model=str(model_dir),
        bands=bands,
        tile=tile,
        overlap=overlap,
        region=region or whole,
        halo=overlap if halo is None else halo,
        diffusion=options,
    )
    threads = torch.get_num_threads()
    try:
        run_plan(plan, overwrite=True, workers=workers, runtime=RuntimeOptions(device=device))
    finally:
        torch.set_num_threads(threads)  # run_plan sets torch's (process-wide) thread count
    return plan


def tile_seams(output_path):
    """(index, strength) on the tile boundaries of a raster that carries a TILER_PLAN, and the
    report."""
    from tiler.quality.seams import seam_report

    report = seam_report(output_path)
    return report.index["tile"], report.strength["tile"], report


RUNS = {  # key -> (name, output file name)
    "tiler": ("tiler (fused lockstep)", "tiler.tif"),
    "baseline": ("independent tiles + pixel feathering", "baseline.tif"),
    "latents": ("independent tiles, latents feathered", "latents.tif"),
}


def compare(
    input_path,
    model_dir,
    out_dir,
    tile: int,
    overlap: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    eta: float = 0.0,
    sampler: str = "ddim",
    runs=("tiler", "baseline"),
    decode_halo: int | None = None,
    **tiler_options,
) -> dict[str, RunResult]:
    """Run tiler and the baseline(s) on the same input and model: their tile-boundary seams and
    times.

    ``runs``: "tiler" (``tiler_fused``), "baseline" (``independent_tiles_feathered``) and/or
    "latents" (the baseline with ``feather="latents"``: only the sampling strategy differs from
    tiler).
    ``tiler_options``: region, halo, decode_tile for tiler's run."""
    out_dir = Path(out_dir)
    common = dict(device=device, eta=eta, sampler=sampler)
    calls = {
        "tiler": lambda out: tiler_fused(
            input_path,
            out,
            model_dir,
            tile,
            overlap,
            steps,
            seed,
            decode_halo=decode_halo,
            **common,
            **tiler_options,
        ),
        "baseline": lambda out: independent_tiles_feathered(
            input_path, out, model_dir, tile, overlap, steps, seed, **common
        ),
        "latents": lambda out: independent_tiles_feathered(
            input_path,
            out,
            model_dir,
            tile,
            overlap,
            steps,
            seed,
            feather="latents",
            decode_halo=decode_halo,
            **common,
        ),
    }
    results = {}
    for key in runs:
        name, filename = RUNS[key]
        output = out_dir / filename
        started = time.perf_counter()
        calls[key](output)
        seconds = time.perf_counter() - started
        index, strength, report = tile_seams(output)
        results[key] = RunResult(name, str(output), seconds, index, strength, report)
    return results


# --- synthetic input
# --------------------------------------------------------------------------------
def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Imagery-like (3, height, width) uint8: smooth gradients and waves, a few sharp edges (a
    disc, a
    diagonal field boundary, a road), a little pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width, 1), yy / max(height, 1)
    cy, cx = (0.3 + 0.4 * rng.random()) * height, (0.3 + 0.4 * rng.random()) * width
    radius = 0.18 * min(width, height)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    field = (xx - 0.6 * width) * 0.8 + (yy - 0.5 * height) > 0
    road = np.abs((xx - 0.25 * width) - 0.3 * (yy - 0.5 * height)) < 1.2
    bands = []
    for band, tint in enumerate((1.0, 0.8, 0.6)):
        phase = rng.random() * 2 * np.pi
        value = (
            90
            + 60 * u * tint
            + 40 * v
            + 18 * np.sin(2 * np.pi * (u * 1.7 + v * 0.9) + phase)
            + 10 * np.cos(2 * np.pi * (u * 0.6 - v * 2.3) + band)
        )
        value += (
            np.where(field, 25 * tint, 0)
            + np.where(disc, -35 + 15 * band, 0)
            + np.where(road, 60, 0)
        )
        bands.append(value + 1.5 * rng.standard_normal((height, width)))
    return np.clip(np.rint(np.stack(bands)), 0, 255).astype(np.uint8)


def write_synthetic(path, width: int, height: int, seed: int = 0):
    import rasterio
    from affine import Affine

    data = synthetic_image(width, height, seed)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0),
    ) as dst:
        dst.write(data)
    return path


# --- the script
# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        help="LDM-SR model folder (default: tiny random model from "
        "tests/tiny_models.py, built in a temp dir)",
    )
    parser.add_argument(
        "--input", help="input raster (default: a synthetic smooth 3-band uint8 image)"
    )
    parser.add_argument(
        "--size", type=int, default=48, help="synthetic input edge, px (default 48)"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tile", type=int, default=16, help="tile, latent px (default 16)")
    parser.add_argument("--overlap", type=int, default=4, help="overlap, latent px (default 4)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="sampling seeds (default 0)"
    )
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument(
        "--region", type=int, help="tiler's region, latent px (default: the whole raster)"
    )
    parser.add_argument("--halo", type=int, help="tiler's region halo (default: the overlap)")
    parser.add_argument(
        "--decode-tile",
        type=int,
        help="tiler's decode tile (default: the whole raster, so no decode boundaries)",
    )
    parser.add_argument(
        "--decode-halo", type=int, help="tiler's decode halo, latent px (default: tiler's default)"
    )
    parser.add_argument(
        "--workers", type=int, help="tiler's worker threads (default: tiler's choice)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--keep", metavar="DIR", help="write the outputs to DIR and keep them")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="seams-") as temp:
        work = Path(args.keep) if args.keep else Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model is None:
            from tiny_models import save_tiny_sr_model

            model = str(save_tiny_sr_model(Path(temp) / "tiny-sr"))
            print("model: tiny random model (tests/tiny_models.py)")
        else:
            print(f"model: {model}")
        source = args.input or write_synthetic(work / "input.tif", args.size, args.size)
        print(
            f"input: {source}" + ("" if args.input else f" (synthetic {args.size} x {args.size})")
        )
        print(
            f"tile {args.tile}, overlap {args.overlap} (latent px), {args.sampler}, "
            f"{args.steps} steps, "
            f"eta {args.eta}, device {args.device}"
        )
        print(f"{'seed':>4}  {'run':<38} {'tile index':>10} {'strength':>9} {'seconds':>8}")
        wins = 0
        for seed in args.seeds:
            folder = work / f"seed{seed}"
            folder.mkdir(exist_ok=True)
            results = compare(
                source,
                model,
                folder,
                args.tile,
                args.overlap,
                args.steps,
                seed,
                device=args.device,
                eta=args.eta,
                sampler=args.sampler,
                runs=("tiler", "baseline", "latents"),
                decode_halo=args.decode_halo,
                region=args.region,
                halo=args.halo,
                decode_tile=args.decode_tile,
                workers=args.workers,
            )
            for result in results.values():
                print(
                    f"{seed:>4}  {result.name:<38} {result.index:>10.4f} {result.strength:>9.4f} "
                    f"{result.seconds:>8.2f}"
                )
            wins += results["tiler"].strength < results["baseline"].strength
        print(
            f"tiler's tile seams are weaker than the baseline's in {wins} of {len(args.seeds)} runs"
        )
        if args.keep:
            print(f"outputs kept in {work} (check them with `tiler qa OUT --heatmap MAP.png`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
