"""The library entry points behind ``tiler upscale`` and ``tiler plan``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadParameter, OutputError
from .cluster import ExecutionOptions, choose_cluster, connect
from .execute import Background, Gate, StageReport, ThreadExecutor
from .export import creation_options, export, format_for
from .plan import Plan, build_plan
from .raster import RasterInfo, SourceReader, check_output_folder, describe, parse_bands
from .resample import ClassicalUpscaler, KERNELS
from .store import Workdir, is_empty_dir, remove_workdir
from .models import DEFAULT_SR_MODEL
from .tasks import build_task, superres, task_module
from .tasks.superres import DiffusionOptions, RuntimeOptions

log = logging.getLogger("tiler")

# Classical kernels are exact per tile (context reads), so tiles need no overlap and regions no
# halo; the sizes only trade per-tile overhead against the cost of the resampling matmuls.
CLASSICAL_DEFAULTS = dict(tile=128, overlap=0, region=256, halo=0)  # chunk = region
OUTPUT_SUFFIX = {"GTiff": ".tif", "COG": ".tif", "Zarr": ".zarr"}


def default_output(input_path: Path, scale: int, fmt: str | None) -> Path:
    suffix = OUTPUT_SUFFIX[fmt or "GTiff"]
    return input_path.with_name(f"{input_path.stem}_x{scale}{suffix}")


def plan_upscale(input_path, output_path=None, *, model: str = DEFAULT_SR_MODEL,
                 scale: int | None = None, bands: str | None = None, output_format: str | None = None,
                 creation_overrides: dict[str, str] | None = None, tile: int | None = None,
                 overlap: int | None = None, region: int | None = None, halo: int | None = None,
                 chunk: int | None = None, diffusion: DiffusionOptions | None = None,
                 info: RasterInfo | None = None) -> Plan:
    """Describe the input and work out the whole run, without touching any output or loading
    model weights. ``info``: the input's description when it is not made yet (a workflow step
    planned ahead of the step that makes it)."""
    info = info or describe(input_path)
    band_list = parse_bands(bands, info)
    if model in KERNELS:
        scale = scale or 4
        context, spec, defaults = ClassicalUpscaler(model, scale).context, None, CLASSICAL_DEFAULTS
        sizes = _grid_sizes(defaults, tile, overlap, region, halo)
        sizes["chunk"] = sizes["region"]  # a halo-free region writes its core as one output chunk
    else:
        sizes = _grid_sizes(superres.GRID_DEFAULTS, tile, overlap, region, halo)
        sizes["chunk"] = chunk or superres.GRID_DEFAULTS["chunk"]
        spec, scale = superres.diffusion_spec(model, info, band_list, scale, sizes["tile"],
                                              diffusion or DiffusionOptions())
        context = 0
    output = Path(output_path) if output_path else default_output(Path(input_path), scale, output_format)
    fmt = format_for(output, output_format)
    return build_plan(info, model=model, scale=scale, context=context, bands=band_list,
                      output=output, output_format=fmt,
                      creation_options=creation_options(info.dtype, fmt, creation_overrides or {}),
                      diffusion=spec, **sizes)


# A copy needs no overlap or halo; large regions keep the unit count low (a 50,000 px square raster
# is 2,500 regions) and match the output's 512 px blocks.
EXPORT_GRID = dict(tile=512, overlap=0, region=1024, halo=0)


def plan_export(input_path, output_path, *, bands: str | None = None, output_format: str | None = None,
                creation_overrides: dict[str, str] | None = None, info: RasterInfo | None = None
                ) -> Plan:
    """Re-encode a raster (format, creation options, band selection) through the engine: a 1x
    nearest copy, so it resumes, writes ``.partial`` and keeps georeferencing like any run."""
    return plan_upscale(input_path, output_path, model="nearest", scale=1, bands=bands,
                        output_format=output_format, creation_overrides=creation_overrides,
                        info=info, **EXPORT_GRID)


def _grid_sizes(defaults, tile, overlap, region, halo) -> dict[str, int]:
    given = dict(tile=tile, overlap=overlap, region=region, halo=halo)
    sizes = {name: defaults[name] if value is None else value for name, value in given.items()}
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
                keep_workdir: bool = False, workers: int | None = None, progress: bool = False,
                runtime: RuntimeOptions | None = None, execution: ExecutionOptions | None = None,
                client=None) -> RunReport:
    """Run (or resume) ``plan``: the task's stages, then export; then remove the workdir.

    ``execution`` says where (threads here, or a Dask cluster; default from Dask's config);
    ``workers`` is a shorthand for its worker count; ``client``, a connected Dask client to run on
    (a workflow connects once for all its runs). Export runs beside the compute stages and
    writes each output chunk as soon as its last stage has written it, so the single writer's
    compression overlaps the computation."""
    started = time.perf_counter()
    output = Path(plan.output.path)
    check_output_folder(output)
    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    runtime = runtime or RuntimeOptions()
    execution = execution or ExecutionOptions.from_config(workers=workers)
    workdir_path = Path(workdir) if workdir else default_workdir(plan)
    given_empty = is_empty_dir(workdir_path)  # the user's own empty folder: emptied, not deleted
    store, resumed = Workdir.open_or_create(workdir_path, plan, task_module(plan).array_specs(plan),
                                            overwrite=overwrite)
    log.info("workdir %s (%s)", workdir_path, "resumed" if resumed else "new")
    report = RunReport(output=str(output), resumed=resumed)
    with _executor(plan, store, runtime, execution, progress, client) as executor:
        report.stages += _run_stages(store, executor, progress, overwrite)
    if not keep_workdir:
        remove_workdir(workdir_path, keep_folder=given_empty)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _executor(plan: Plan, store: Workdir, runtime: RuntimeOptions, execution: ExecutionOptions,
              progress: bool, client=None):
    """Threads in this process, or a Dask executor on ``client`` or the cluster the options name."""
    uses_gpu = not plan.is_classical and runtime.device != "cpu"
    kind = "client" if client is not None else choose_cluster(execution, uses_gpu)
    if kind != "threads":
        from .distributed import DaskExecutor

        connection = (contextlib.nullcontext(client) if client is not None
                      else connect(kind, execution, uses_gpu, progress))
        with connection as connected:
            executor = DaskExecutor(connected, plan, store.path, runtime, execution.retries)
            try:
                yield executor
            finally:
                executor.close()
        return
    reader = SourceReader(describe(plan.input.path), plan.bands)
    try:
        yield _thread_executor(plan, store, reader, runtime, execution.workers)
    finally:
        reader.close()


def _thread_executor(plan: Plan, store: Workdir, reader: SourceReader, runtime: RuntimeOptions,
                     workers: int | None) -> ThreadExecutor:
    cores = os.cpu_count() or 1
    if plan.is_classical:
        return ThreadExecutor(build_task(plan, store, reader), workers or cores)
    model = superres.ModelRunner.load(plan, runtime)
    model_workers, other_workers = worker_counts(model.device.type, cores, workers)
    model.limit_threads(max(1, cores // model_workers))
    task = build_task(plan, store, reader, model, runtime.batch_size)
    model_stages = task_module(plan).MODEL_STAGES
    return ThreadExecutor(task, model_workers, {stage: other_workers for stage in task.stages
                                                if stage not in model_stages})


def worker_counts(device_type: str, cores: int, workers: int | None) -> tuple[int, int]:
    """Threads for the stages that run the model and for the others (assembly): ``workers`` for
    both when given. On a GPU, two threads share the model (one's CPU work, reads, blending and
    Zarr, overlaps the other's kernels) and the stages without it use every core, so the GPU does
    not wait long between stages; on a CPU, one thread per core (one torch thread each)."""
    if workers:
        return workers, workers
    return (2, cores) if device_type != "cpu" else (cores, cores)


def _run_stages(store: Workdir, executor, progress: bool, overwrite: bool) -> list[StageReport]:
    final = executor.stages[-1]
    ny, nx = executor.unit_shapes[final]  # the final stage's units are the output chunks
    pending_final = set(store.pending(final))
    gate = Gate(ready=[(iy, ix) for iy in range(ny) for ix in range(nx) if (iy, ix) not in pending_final])
    exporter = Background(lambda: export(store, progress, overwrite, wait_for=gate.wait), "tiler-export")
    export_started = time.perf_counter()
    reports = []
    try:
        for name in executor.stages:
            total = math.prod(executor.unit_shapes[name])
            reports.append(executor.run_stage(name, total, store.pending(name), progress,
                                              gate.open if name == final else None))
    except BaseException as exc:
        gate.fail(exc)
        _join_quietly(exporter)
        raise
    exporter.result()
    reports.append(StageReport("export", 1, 1, time.perf_counter() - export_started))
    return reports


def _join_quietly(exporter: Background):
    """Wait for the exporter to stop after a compute failure; that failure is the one reported."""
    try:
        exporter.result()
    except Exception:
        pass
