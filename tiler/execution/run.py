"""Running a plan: open (or resume) its workdir, run the task's stages on threads here or on a Dask
cluster, export beside them (the single writer), remove the workdir."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tiler.errors import TilerError
from tiler.execution.cluster import ExecutionOptions, choose_cluster, connect
from tiler.execution.export import export
from tiler.execution.locks import holding
from tiler.execution.safety import check_output
from tiler.execution.threads import Background, Gate, StageReport, ThreadExecutor
from tiler.ldm.options import RuntimeOptions
from tiler.ldm.runner import ModelRunner
from tiler.raster.formats import check_output_folder
from tiler.raster.sources import SourceReader, describe
from tiler.tasks import build_task, task_class
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir, is_empty_dir, remove_workdir

log = logging.getLogger("tiler")


@dataclass
class RunReport:
    output: str
    resumed: bool
    stages: list[StageReport] = field(default_factory=list)
    seconds: float = 0.0


def default_workdir(plan: Plan) -> Path:
    output = Path(plan.output.path)
    return output.with_name(output.name + ".tiler")


def run_plan(
    plan: Plan,
    *,
    workdir: Path | None = None,
    overwrite: bool = False,
    keep_workdir: bool = False,
    workers: int | None = None,
    progress: bool = False,
    runtime: RuntimeOptions | None = None,
    execution: ExecutionOptions | None = None,
    client=None,
) -> RunReport:
    """Run (or resume) ``plan``: the task's stages, then export; then remove the workdir.

    ``execution`` says where (threads here, or a Dask cluster; default from Dask's config);
    ``workers`` is a shorthand for its worker count; ``client``, a connected Dask client to run on
    (a workflow connects once for all its runs). Export runs beside the compute stages and
    writes each output chunk as soon as its last stage has written it, so the single writer's
    compression overlaps the computation."""
    started = time.perf_counter()
    output = Path(plan.output.path)
    check_output_folder(output)
    workdir_path = Path(workdir) if workdir else default_workdir(plan)
    check_output(plan, workdir_path, overwrite)
    runtime = runtime or RuntimeOptions()
    execution = execution or ExecutionOptions.from_config(workers=workers)
    with holding(output, "output"), holding(workdir_path, "workdir"):
        given_empty = is_empty_dir(workdir_path)  # the user's own empty folder: emptied, kept
        store, resumed = Workdir.open_or_create(
            workdir_path, plan, task_class(plan).array_specs(plan), overwrite=overwrite
        )
        log.info("workdir %s (%s)", workdir_path, "resumed" if resumed else "new")
        report = RunReport(output=str(output), resumed=resumed)
        try:
            with _executor(plan, store, runtime, execution, progress, client) as executor:
                report.stages += _run_stages(store, executor, progress, overwrite)
        except Exception as exc:
            _keep_only_resumable_work(exc, store, resumed, given_empty)
            raise
        if not keep_workdir:
            remove_workdir(workdir_path, keep_folder=given_empty)
    report.seconds = time.perf_counter() - started
    return report


def _keep_only_resumable_work(error: Exception, store: Workdir, resumed: bool, given_empty: bool):
    """After a failure: a new workdir with no unit done is removed (nothing to resume); one that
    holds done work is kept, and the error says so."""
    if not resumed and not store.has_progress():
        try:
            remove_workdir(store.path, keep_folder=given_empty)
        except OSError as exc:  # never hide the failure behind the clean-up's
            log.warning("could not remove the workdir %s: %s", store.path, exc)
    elif isinstance(error, TilerError) and len(error.args) == 1:
        error.args = (
            f"{error.args[0]}; {store.path} keeps the work done: run the same command "
            "again to resume",
        )


@contextlib.contextmanager
def _executor(
    plan: Plan,
    store: Workdir,
    runtime: RuntimeOptions,
    execution: ExecutionOptions,
    progress: bool,
    client=None,
):
    """Threads in this process, or a Dask executor on ``client`` or the cluster the options name."""
    uses_gpu = not plan.is_classical and runtime.device != "cpu"
    kind = "client" if client is not None else choose_cluster(execution, uses_gpu)
    if kind != "threads":
        from tiler.execution.dask_executor import DaskExecutor

        connection = (
            contextlib.nullcontext(client)
            if client is not None
            else connect(kind, execution, uses_gpu, progress)
        )
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


def _thread_executor(
    plan: Plan, store: Workdir, reader: SourceReader, runtime: RuntimeOptions, workers: int | None
) -> ThreadExecutor:
    cores = os.cpu_count() or 1
    if plan.is_classical:
        return ThreadExecutor(build_task(plan, store, reader), workers or cores)
    model = ModelRunner.load(plan, runtime)
    model_workers, other_workers = worker_counts(model.device.type, cores, workers)
    model.limit_threads(torch_threads(cores, model_workers, runtime.threads))
    task = build_task(plan, store, reader, model, runtime.batch_size)
    return ThreadExecutor(
        task,
        model_workers,
        {stage: other_workers for stage in task.stages if stage not in task.model_stages},
    )


def torch_threads(cores: int, model_workers: int, threads: int | None = None) -> int:
    """torch threads per model worker: ``--threads``, else the user's OMP_NUM_THREADS where set (a
    shared machine, a batch job's share of it), else the cores split between the workers."""
    if threads:
        return threads
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, cores // model_workers)


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
    gate = Gate(
        ready=[(iy, ix) for iy in range(ny) for ix in range(nx) if (iy, ix) not in pending_final]
    )
    exporter = Background(
        lambda: export(store, progress, overwrite, wait_for=gate.wait), "tiler-export"
    )
    export_started = time.perf_counter()
    reports = []
    try:
        for name in executor.stages:
            total = math.prod(executor.unit_shapes[name])
            reports.append(
                executor.run_stage(
                    name, total, store.pending(name), progress, gate.open if name == final else None
                )
            )
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
