"""The Dask executor: every unit of every stage as one Dask task on a cluster.

A unit is a pure function of (plan, workdir, stage, index) that writes exactly one chunk of the
workdir and then its done flag, so any worker may run it, a task lost with its worker is simply run
again elsewhere, and a unit already done (re-run after a worker died, or a resumed job) returns at
once. (This module imports dask.distributed: import it only to run on a cluster.) Workers need the
input, the model folder and the workdir at the same paths as this process
(a shared file system); export stays here, the one writer of the output file.

- The model is loaded once per worker by ``ModelPlugin`` (``client.register_plugin``), built from
  the plan's model folder and the run options; no model object is ever pickled or scattered.
- Stages that need the model ask for ``resources={"GPU": 1}`` when the cluster's workers offer GPUs,
  so each GPU runs one unit at a time; the others (assembling latents) run on any worker.
- Failing tasks are retried (``retries``); a worker that dies is replaced by its nanny and its
  tasks rerun; a unit that fails every time (or kills every worker it runs on) stops the stage with
  an error naming the unit and the cause.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from distributed import WorkerPlugin

from tiler.errors import TilerError, first_line
from tiler.execution.threads import StageReport, keep_freed_memory, track_stage
from tiler.ldm.runner import ModelRunner
from tiler.raster.sources import SourceReader, describe
from tiler.tasks import build_task, task_class
from tiler.workdir.plan import Plan, plan_from_json
from tiler.workdir.store import Workdir

log = logging.getLogger("tiler")
GPU = "GPU"


class DaskExecutor:
    def __init__(self, client, plan: Plan, workdir: Path, runtime, retries: int):
        self.client = client
        self.plan = plan
        self.plan_json = plan.model_dump_json()
        self.workdir = str(Path(workdir).resolve())
        self.retries = retries
        task = task_class(plan)
        self.stages = task.stages_of(plan)
        self.unit_shapes = task.unit_shapes_of(plan)
        self.unit_names = task.unit_names_of(plan)
        self.model_stages = set(task.model_stages) & set(self.stages)
        self.plugin_name = None
        if self.model_stages:
            self.plugin_name = f"tiler-model-{plan.fingerprint}"
            client.register_plugin(ModelPlugin(self.plan_json, runtime), name=self.plugin_name)
        self.gpu_resources = _workers_offer(client, GPU)
        if self.gpu_resources and plan.diffusion is not None and plan.diffusion.dtype == "float32":
            log.warning(
                "the plan computes in float32 (chosen on a machine without a GPU?) while the "
                "cluster's workers have GPUs; pass --dtype bfloat16 to run them at full speed"
            )
        log.info(
            "Dask executor: %d workers, GPU resources: %s",
            len(_workers(client)),
            self.gpu_resources,
        )

    def close(self):
        """Drop the run's model plugin from the workers (each keeps the model in its process cache
        for the next plan using it, not one model per plan run)."""
        if self.plugin_name is None:
            return
        try:
            self.client.unregister_worker_plugin(self.plugin_name)
        except Exception as exc:  # the cluster is gone or shutting down: nothing left to release
            log.info("could not remove the model plugin %s: %s", self.plugin_name, first_line(exc))

    def resources(self, stage: str) -> dict | None:
        return {GPU: 1} if self.gpu_resources and stage in self.model_stages else None

    def run_stage(
        self,
        name: str,
        total: int,
        pending: Sequence[Hashable],
        progress: bool,
        on_done: Callable[[Hashable], None] | None = None,
    ) -> StageReport:
        from distributed import as_completed

        run_id = uuid.uuid4().hex[:12]
        futures = {
            self.client.submit(
                run_unit,
                self.plan_json,
                self.workdir,
                name,
                tuple(index),
                self.plugin_name,
                key=f"tiler-{name}-{run_id}-{index[0]}-{index[1]}",
                retries=self.retries,
                resources=self.resources(name),
            ): tuple(index)
            for index in pending
        }
        finished = ((futures[future], _error_of(future)) for future in as_completed(futures))
        try:
            return track_stage(
                name,
                total,
                len(pending),
                finished,
                lambda: self.client.cancel(list(futures)),
                progress,
                on_done,
                self.unit_names[name],
            )
        except BaseException:
            self.client.cancel(list(futures))
            raise


def _error_of(future) -> BaseException | None:
    if future.status == "finished":
        return None
    if future.status == "cancelled":
        return TilerError("cancelled by the Dask scheduler")
    error = future.exception()
    if type(error).__name__ == "KilledWorker":  # the worker died each time it ran this unit
        return TilerError(
            f"every worker running it died ({first_line(error)}); out of memory? "
            "see the workers' logs"
        )
    return error


def _workers(client) -> dict:
    return client.scheduler_info(n_workers=-1).get("workers", {})


def _workers_offer(client, resource: str) -> bool:
    return any(info.get("resources", {}).get(resource) for info in _workers(client).values())


# --- on the workers ------------------------------------------------------------------------------
class ModelPlugin(WorkerPlugin):
    """Holds the plan's model on a worker, loaded once when the plugin is set up there."""

    name = "tiler-model"

    def __init__(self, plan_json: str, runtime):
        self.plan_json = plan_json
        self.runtime = runtime
        self.runner = None

    def setup(self, worker):
        plan = plan_from_json(self.plan_json)
        self.runner = ModelRunner.load(plan, self.runtime)
        # --threads, else one torch thread per worker thread unless the worker's environment says
        # otherwise
        given = self.runtime.threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
        self.runner.limit_threads(given)

    def teardown(self, worker):
        self.runner = None
        with _TASKS_LOCK:
            _TASKS.clear()  # the run's task holds the model too


_TASKS: dict[
    tuple[str, str], object
] = {}  # (plan fingerprint, workdir) -> task, per worker process
_TASKS_LOCK = threading.Lock()


def run_unit(
    plan_json: str, workdir: str, stage: str, index: tuple[int, int], plugin_name: str | None
):
    """Run one unit on this worker (a no-op if the workdir says it is done)."""
    task = _task_for(plan_json, workdir, plugin_name)
    if not task.store.is_done(stage, index):
        getattr(task, stage)(index)


def _task_for(plan_json: str, workdir: str, plugin_name: str | None):
    plan = plan_from_json(plan_json)
    key = (plan.fingerprint, workdir)
    with _TASKS_LOCK:
        if key not in _TASKS:
            _TASKS.clear()  # one run at a time per worker: drop the last run's handles
            keep_freed_memory()
            model = batch_size = None
            if plugin_name is not None:
                from distributed import get_worker

                plugin = get_worker().plugins[plugin_name]
                model, batch_size = plugin.runner, plugin.runtime.batch_size
            store = Workdir.open(Path(workdir), plan, task_class(plan).array_specs(plan))
            reader = SourceReader(describe(plan.input.path), plan.bands)
            _TASKS[key] = build_task(plan, store, reader, model, batch_size)
        return _TASKS[key]
