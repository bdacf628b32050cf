"""The library entry points behind ``tiler upscale`` and ``tiler plan``."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import engine
from .errors import BadParameter, OutputError
from threadpoolctl import threadpool_limits

from .execute import Background, Gate, StageReport, run_stage
from .export import creation_options, export, format_for
from .plan import Plan, build_plan
from .raster import SourceReader, check_output_folder, describe, parse_bands
from .resample import ClassicalUpscaler, KERNELS
from .store import Workdir, remove_workdir
from .tasks.classical import ClassicalUpscaleTask

log = logging.getLogger("tiler")

# Classical kernels are exact per tile (context reads), so tiles need no overlap and regions no
# halo; the sizes only trade per-tile overhead against the cost of the resampling matmuls.
CLASSICAL_DEFAULTS = dict(tile=128, overlap=0, region=256, halo=0)
OUTPUT_SUFFIX = {"GTiff": ".tif", "COG": ".tif", "Zarr": ".zarr"}


def default_output(input_path: Path, scale: int, fmt: str | None) -> Path:
    suffix = OUTPUT_SUFFIX[fmt or "GTiff"]
    return input_path.with_name(f"{input_path.stem}_x{scale}{suffix}")


def plan_upscale(input_path, output_path=None, *, model: str = "bicubic", scale: int = 4,
                 bands: str | None = None, output_format: str | None = None,
                 creation_overrides: dict[str, str] | None = None, tile: int | None = None,
                 overlap: int | None = None, region: int | None = None,
                 halo: int | None = None) -> Plan:
    """Describe the input and work out the whole run, without touching any output."""
    if model not in KERNELS:
        raise BadParameter("--model", f"{model!r} is not a known model; expected one of "
                           f"{', '.join(KERNELS)}")
    upscaler = ClassicalUpscaler(model, scale)
    info = describe(input_path)
    band_list = parse_bands(bands, info)
    output = Path(output_path) if output_path else default_output(Path(input_path), scale, output_format)
    fmt = format_for(output, output_format)
    sizes = _grid_sizes(tile, overlap, region, halo)
    return build_plan(info, model=model, scale=scale, context=upscaler.context, bands=band_list,
                      output=output, output_format=fmt,
                      creation_options=creation_options(info.dtype, fmt, creation_overrides or {}),
                      **sizes)


def _grid_sizes(tile, overlap, region, halo) -> dict[str, int]:
    given = dict(tile=tile, overlap=overlap, region=region, halo=halo)
    sizes = {name: CLASSICAL_DEFAULTS[name] if value is None else value for name, value in given.items()}
    if sizes["tile"] < 1:
        raise BadParameter("--tile", f"{sizes['tile']} is too small; expected a tile of >= 1 px")
    if not 0 <= sizes["overlap"] < sizes["tile"]:
        raise BadParameter("--overlap", f"{sizes['overlap']} is out of range; expected 0..{sizes['tile'] - 1} "
                           f"(less than the tile, {sizes['tile']})")
    if sizes["region"] < 1:
        raise BadParameter("--region", f"{sizes['region']} is too small; expected >= 1 px")
    if sizes["halo"] < 0:
        raise BadParameter("--halo", f"{sizes['halo']} is negative; expected >= 0 px")
    return sizes


@dataclass
class RunReport:
    output: str
    resumed: bool
    stages: list[StageReport] = field(default_factory=list)
    seconds: float = 0.0


def default_workdir(plan: Plan) -> Path:
    output = Path(plan.output.path)
    return output.with_name(output.name + ".tiler")


def run_upscale(plan: Plan, *, workdir: Path | None = None, overwrite: bool = False,
                keep_workdir: bool = False, workers: int | None = None,
                progress: bool = False) -> RunReport:
    """Run (or resume) ``plan``: process, assemble, export; then remove the workdir.

    Export runs beside the compute stages and writes each output chunk as soon as it is final,
    so the single writer's compression overlaps the computation."""
    started = time.perf_counter()
    output = Path(plan.output.path)
    check_output_folder(output)
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    workers = workers or os.cpu_count() or 1
    workdir_path = Path(workdir) if workdir else default_workdir(plan)
    store, resumed = Workdir.open_or_create(workdir_path, plan, overwrite=overwrite)
    log.info("workdir %s (%s)", workdir_path, "resumed" if resumed else "new")
    report = RunReport(output=str(output), resumed=resumed)
    final_stage = "assemble" if plan.grid.halo > 0 else "process"
    ny, nx = plan.tile_grid().region_shape
    pending = set(store.pending(final_stage))
    gate = Gate(ready=[(iy, ix) for iy in range(ny) for ix in range(nx) if (iy, ix) not in pending])
    exporter = Background(lambda: export(store, progress, overwrite, wait_for=gate.wait), "tiler-export")
    export_started = time.perf_counter()
    try:
        with threadpool_limits(limits=1):  # one BLAS thread per worker thread
            report.stages.append(_process(store, workers, progress,
                                          gate.open if final_stage == "process" else None))
            if plan.grid.halo > 0:
                report.stages.append(_assemble(store, workers, progress, gate.open))
    except BaseException as exc:
        gate.fail(exc)
        _join_quietly(exporter)
        raise
    exporter.result()
    report.stages.append(StageReport("export", 1, 1, time.perf_counter() - export_started))
    if not keep_workdir:
        remove_workdir(workdir_path)
    report.seconds = time.perf_counter() - started
    return report


def _join_quietly(exporter: Background):
    """Wait for the exporter to stop after a compute failure; that failure is the one reported."""
    try:
        exporter.result()
    except Exception:
        pass


def _process(store: Workdir, workers: int, progress: bool, on_done) -> StageReport:
    plan = store.plan
    grid = plan.tile_grid()
    reader = SourceReader(describe(plan.input.path), plan.bands)
    task = ClassicalUpscaleTask(plan, reader)

    def work(index):
        region = grid.region_at(*index)
        values, valid = task.region_pixels(region)
        engine.write_region(store, region, values, valid)

    try:
        pending = store.pending("process")
        ny, nx = grid.region_shape
        return run_stage("process", ny * nx, pending, work, workers, progress, on_done)
    finally:
        reader.close()


def _assemble(store: Workdir, workers: int, progress: bool, on_done) -> StageReport:
    ny, nx = store.plan.tile_grid().region_shape
    pending = store.pending("assemble")
    return run_stage("assemble", ny * nx, pending, lambda index: engine.assemble_chunk(store, index),
                     workers, progress, on_done)
