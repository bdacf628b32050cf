"""Where a run executes: in this process (threads) or on a Dask cluster, and how to reach it.

``ExecutionOptions`` is what the user chose (``--cluster``, ``--scheduler``, ``--workers``,
``--retries``); unset values come from Dask's own configuration files under the key ``tiler``
(``~/.config/dask/*.yaml`` or ``$DASK_CONFIG``), so a site can set its cluster once::

    tiler:
      cluster: slurm
      workers: 8          # jobs to request
    jobqueue:
      slurm: {cores: 8, memory: 64GB, worker-extra-args: ["--resources", "GPU=1"]}

``connect`` yields a ``distributed.Client`` (or None for in-process threads) and closes what it
started. A local cluster listens on 127.0.0.1 only; shared clusters should use Dask's TLS settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tiler.errors import BadParameter, TilerError

log = logging.getLogger("tiler")

ClusterKind = Literal["auto", "threads", "local", "slurm", "pbs", "kubernetes"]
CLUSTER_KINDS = ("auto", "threads", "local", "slurm", "pbs", "kubernetes")
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
EXTRA_FOR = {"slurm": "slurm", "pbs": "pbs", "kubernetes": "kubernetes"}


class ExecutionOptions(BaseModel):
    """How and where to run; never changes the output."""

    # YAML keys are the CLI's (connect-timeout); Python code may use the field names
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        alias_generator=lambda name: name.replace("_", "-"),
    )

    cluster: ClusterKind = "auto"
    scheduler: str | None = None  # address of a running Dask scheduler; wins over ``cluster``
    workers: int | None = Field(default=None, ge=1)  # threads, local worker processes, or jobs
    retries: int = Field(default=2, ge=0)  # extra attempts of a failing unit on a cluster
    connect_timeout: float = Field(default=20.0, gt=0)  # seconds to reach a --scheduler
    wait_for_workers: float = Field(default=600.0, gt=0)  # seconds to wait for the first worker

    @classmethod
    def from_config(cls, **given) -> ExecutionOptions:
        """``given`` (None = not given) over the ``tiler`` section of Dask's configuration."""
        import dask.config

        settings = {
            key.replace("_", "-"): value
            for key, value in (dask.config.get("tiler", default={}) or {}).items()
        }
        settings.update(
            {key.replace("_", "-"): value for key, value in given.items() if value is not None}
        )
        try:
            return cls.model_validate(settings)
        except ValueError as exc:
            raise BadParameter(
                "cluster", f"bad cluster settings {settings}: {_first_error(exc)}"
            ) from None


def _first_error(exc) -> str:
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']} (got {first.get('input')!r})"


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def choose_cluster(options: ExecutionOptions, uses_gpu: bool) -> str:
    """The cluster kind to use: ``auto`` runs in this process unless there are several GPUs to
    spread over (one device in one process is what a one-worker cluster would be, minus the
    process start-up and the second model load)."""
    if options.scheduler:
        return "scheduler"
    if options.cluster != "auto":
        return options.cluster
    return "local" if uses_gpu and visible_gpus() > 1 else "threads"


@contextlib.contextmanager
def connect(kind: str, options: ExecutionOptions, uses_gpu: bool, progress: bool) -> Iterator:
    """Yield a connected ``distributed.Client`` for ``kind`` (None for ``threads``)."""
    if kind == "threads":
        yield None
        return
    with contextlib.ExitStack() as stack:
        cluster = (
            None
            if kind == "scheduler"
            else stack.enter_context(_start_cluster(kind, options, uses_gpu))
        )
        client = stack.enter_context(_client(cluster, options.scheduler, options.connect_timeout))
        if progress:
            _report_dashboard(client)
        _wait_for_workers(client, options.wait_for_workers)
        yield client


def _report_dashboard(client):
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        log.info("no Dask dashboard: pip install 'ldm-tiler[dashboard]' (bokeh) for one")
    elif client.dashboard_link:
        log.warning("Dask dashboard: %s", client.dashboard_link)


@contextlib.contextmanager
def _client(cluster, address: str | None, timeout: float):
    from distributed import Client

    try:
        client = Client(cluster if cluster is not None else address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        raise TilerError(
            f"--scheduler {address}: cannot connect to a Dask scheduler there "
            f"({exc}); expected the address a running `dask scheduler` prints, "
            "e.g. tcp://10.0.0.5:8786"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _wait_for_workers(client, timeout: float):
    if client.scheduler_info().get("workers"):
        return
    log.warning("waiting for a Dask worker to join %s", client.scheduler.address)
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise TilerError(
            f"no Dask worker joined {client.scheduler.address} within {timeout:.0f} s; "
            "start workers with `dask worker ADDRESS` (GPU workers: --nworkers 1 "
            "--nthreads 1 --resources GPU=1)"
        ) from None


@contextlib.contextmanager
def _start_cluster(kind: str, options: ExecutionOptions, uses_gpu: bool):
    if kind == "local":
        cluster = local_cluster(options.workers, visible_gpus() if uses_gpu else 0)
    elif kind in JOBQUEUE_CLASSES:
        cluster = _jobqueue_cluster(kind, options.workers)
    elif kind == "kubernetes":
        cluster = _kubernetes_cluster(options.workers)
    else:
        raise BadParameter(
            "cluster", f"{kind!r} is not a cluster kind; expected one of {', '.join(CLUSTER_KINDS)}"
        )
    try:
        yield cluster
    finally:
        cluster.close()


def local_cluster(workers: int | None, gpus: int):
    """Worker processes on this machine, started with spawn, listening on 127.0.0.1 only: one per
    GPU (CUDA_VISIBLE_DEVICES set, resource GPU=1), or ``workers`` one-thread CPU workers (default:
    one per core). Each worker runs under a nanny that restarts it if it dies."""
    import os

    import dask.config
    from distributed import Nanny, Scheduler, SpecCluster

    if gpus:
        devices = visible_device_ids(gpus)[: workers or gpus]
        specs = {
            f"gpu-{device}": worker_spec(
                Nanny, env={"CUDA_VISIBLE_DEVICES": device}, resources={"GPU": 1}
            )
            for device in devices
        }
    else:
        count = workers or os.cpu_count() or 1
        specs = {f"cpu-{i}": worker_spec(Nanny) for i in range(count)}
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        return SpecCluster(
            workers=specs, scheduler=scheduler, silence_logs=logging.ERROR, name="tiler"
        )


def visible_device_ids(gpus: int) -> list[str]:
    """The ids to give each worker in CUDA_VISIBLE_DEVICES: within the ones this process sees."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else []
    return ids[:gpus] if ids else [str(i) for i in range(gpus)]


def worker_spec(nanny_class, **options) -> dict:
    # Workers log only CRITICAL: a unit's failure reaches the client as its task's error (one
    # line from tiler), while Dask's ERROR logs at shutdown (a heartbeat racing the scheduler's
    # close) would print tracebacks after a successful run.
    return {
        "cls": nanny_class,
        "options": {
            "nthreads": 1,
            "host": "127.0.0.1",
            "silence_logs": logging.CRITICAL,
            **options,
        },
    }


def _jobqueue_cluster(kind: str, jobs: int | None):
    """A dask-jobqueue cluster; its settings (queue, cores, memory, GPU resources) come from Dask's
    configuration (``jobqueue.slurm`` / ``jobqueue.pbs``)."""
    module = _import_extra("dask_jobqueue", kind)
    cluster = getattr(module, JOBQUEUE_CLASSES[kind])()
    cluster.scale(jobs=jobs or 1)
    return cluster


def _kubernetes_cluster(workers: int | None):
    """A dask-kubernetes operator cluster; its pod spec comes from Dask's ``kubernetes`` config."""
    module = _import_extra("dask_kubernetes.operator", "kubernetes")
    return module.KubeCluster(name="tiler", n_workers=workers or 1)


def _import_extra(module_name: str, kind: str):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise BadParameter(
            "cluster",
            f"{kind} needs {module_name.split('.')[0].replace('_', '-')}, "
            f"which is not installed; expected it from pip install "
            f"'ldm-tiler[{EXTRA_FOR[kind]}]'",
        ) from None
